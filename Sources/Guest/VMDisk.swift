import SnapdumpConfig

/// One drive of a VM config: `scsi0: local:vm-100-disk-0,size=8G,cache=none`.
///
/// `volid` is the volume (`storeid:volname`), an absolute path, or `none`
/// for an empty CD-ROM drive; `options` are the other property-string items
/// (`size`, `cache`, `format`, `discard`, …) in their written order.
public struct VMDisk: Sendable, Equatable {
    public enum Bus: String, Sendable, CaseIterable, Comparable {
        case ide, sata, scsi, virtio

        /// Highest index per bus, as Proxmox allows: ide0-3, sata0-5, scsi0-30, virtio0-15.
        public var maxIndex: Int {
            switch self {
            case .ide: return 3
            case .sata: return 5
            case .scsi: return 30
            case .virtio: return 15
            }
        }

        public static func < (a: Bus, b: Bus) -> Bool {
            allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
        }
    }

    public var key: String
    public var volid: String
    public var options: PropertyString

    public init(key: String, volid: String, options: PropertyString = PropertyString()) {
        self.key = key
        self.volid = volid
        self.options = options
    }

    public var bus: Bus { VMDisk.parseKey(key)!.bus }
    public var index: Int { VMDisk.parseKey(key)!.index }

    /// `size=` as written (`32G`), informational as in Proxmox.
    public var size: String? { options["size"] }
    /// `size=` in bytes.
    public var sizeBytes: UInt64? { size.flatMap { VMDisk.parseSize($0) } }
    /// `cache=`: none (the default), writethrough, writeback, unsafe, directsync.
    public var cache: String? { options["cache"] }
    /// `format=` (raw, qcow2, …) when written.
    public var format: String? { options["format"] }
    public var isCDROM: Bool { options["media"] == "cdrom" }
    /// `storeid` of a `storeid:volname` volume; nil for paths and `none`.
    public var storageID: String? {
        guard !volid.hasPrefix("/"), let colon = volid.firstIndex(of: ":") else { return nil }
        return String(volid[..<colon])
    }

    /// The config value: `volid,key=value,…`.
    public var value: String {
        var p = options
        p.items.insert((key: "file", value: volid), at: 0)
        return p.serialized(defaultKey: "file")
    }

    /// (bus, index) for `scsi0`, `virtio15`, …; nil for anything else.
    public static func parseKey(_ key: String) -> (bus: Bus, index: Int)? {
        for bus in Bus.allCases where key.hasPrefix(bus.rawValue) {
            let digits = key.dropFirst(bus.rawValue.count)
            guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
                  digits == "0" || !digits.hasPrefix("0"),
                  let n = Int(digits), n <= bus.maxIndex else { return nil }
            return (bus, n)
        }
        return nil
    }

    public static func isDiskKey(_ key: String) -> Bool { parseKey(key) != nil }

    /// Options Proxmox knows for drives, with a validator each.
    static let optionRules: [String: @Sendable (String) -> Bool] = {
        let bool: @Sendable (String) -> Bool = { VMConfig.parseBool($0) != nil }
        let any: @Sendable (String) -> Bool = { !$0.isEmpty }
        let number: @Sendable (String) -> Bool = { Double($0) != nil }
        var r: [String: @Sendable (String) -> Bool] = [
            "size": { parseSize($0) != nil },
            "cache": { ["none", "writethrough", "writeback", "unsafe", "directsync"].contains($0) },
            "format": { ["raw", "qcow2", "vmdk", "qed", "cloop", "cow"].contains($0) },
            "media": { ["disk", "cdrom"].contains($0) },
            "discard": { ["on", "ignore"].contains($0) },
            "aio": { ["native", "threads", "io_uring"].contains($0) },
            "werror": { ["enospc", "ignore", "report", "stop"].contains($0) },
            "rerror": { ["ignore", "report", "stop"].contains($0) },
            "serial": any, "wwn": any, "model": any, "vendor": any, "product": any,
            "queues": { Int($0).map { $0 >= 2 } ?? false },
        ]
        for b in ["backup", "iothread", "ssd", "replicate", "snapshot", "ro", "detect_zeroes", "shared"] { r[b] = bool }
        for base in ["mbps", "mbps_rd", "mbps_wr", "iops", "iops_rd", "iops_wr"] {
            r[base] = number
            r[base + "_max"] = number
            r[base + "_max_length"] = number
        }
        return r
    }()

    /// Parses a drive value; errors name `file:line` and the key.
    public static func parse(key: String, value: String, file: String, line: Int?) throws -> VMDisk {
        let props: PropertyString
        do {
            props = try PropertyString.parse(value, defaultKey: "file", what: key)
        } catch let e as ConfigError {
            throw ConfigError(file: file, line: line, "\(key): \(e.message)")
        }
        guard let volid = props["file"], !volid.isEmpty else {
            throw ConfigError(file: file, line: line, "\(key): missing volume in '\(value)'")
        }
        var options = props
        options["file"] = nil
        for item in options.items {
            guard let rule = optionRules[item.key] else {
                throw ConfigError(file: file, line: line, "\(key): unknown drive option '\(item.key)'")
            }
            guard rule(item.value) else {
                throw ConfigError(file: file, line: line, "\(key): invalid value '\(item.value)' for '\(item.key)'")
            }
        }
        let disk = VMDisk(key: key, volid: volid, options: options)
        guard isValidVolumeID(volid, cdrom: disk.isCDROM) else {
            throw ConfigError(file: file, line: line, "\(key): invalid volume '\(volid)' (expected 'storeid:volname' or an absolute path)")
        }
        return disk
    }

    /// `storeid:volname`, an absolute path, or for CD-ROMs `none` / `cdrom`.
    public static func isValidVolumeID(_ volid: String, cdrom: Bool = false) -> Bool {
        if cdrom && (volid == "none" || volid == "cdrom") { return true }
        if volid.hasPrefix("/") { return volid.count > 1 && !volid.contains(",") }
        guard let colon = volid.firstIndex(of: ":") else { return false }
        let store = String(volid[..<colon]), name = volid[volid.index(after: colon)...]
        return SectionConfig.isValidID(store) && !name.isEmpty
            && !name.contains(where: { $0 == " " || $0 == "\t" || $0 == "," || $0 == "=" })
    }

    /// The largest disk size accepted (64 PiB): beyond any storage, and small
    /// enough that sums over a VM's drives never overflow.
    public static let maxSizeBytes: UInt64 = 1 << 56

    /// `32G`, `512M`, `100K`, `1.5T`, or plain bytes (`defaultUnit` when no
    /// suffix), at most `maxSizeBytes`; nil for anything else.
    public static func parseSize(_ s: String, defaultUnit: Character? = nil) -> UInt64? {
        let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824, "T": 1_099_511_627_776]
        let upper = s.uppercased()
        guard let last = upper.last else { return nil }
        let (digits, mult): (Substring, Double)
        if let u = units[last] {
            (digits, mult) = (upper.dropLast(), u)
        } else {
            (digits, mult) = (Substring(upper), defaultUnit.flatMap { units[$0] } ?? 1)
        }
        // Digits and one dot only: no exponents (`1e30`), signs, `inf` or `nan`.
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              digits.filter({ $0 == "." }).count <= 1, let v = Double(digits) else { return nil }
        let bytes = (v * mult).rounded(.up)
        guard bytes.isFinite, bytes <= Double(maxSizeBytes) else { return nil }
        return UInt64(bytes)
    }
}
