import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// A VM's configuration, `<config-dir>/qemu/<vmid>.conf`, in Proxmox's
/// `qm.conf` format:
///
///     #Web server, rebuilt 2024
///     agent: 1
///     cores: 2
///     memory: 2048
///     name: web1
///     scsi0: local:100/vm-100-disk-0.raw,size=8G
///
/// The description is the `#` comment lines; keys are written sorted, as
/// Proxmox writes them. snapdump adds `kernel`, `initrd` and `append` for
/// direct kernel boot. Unknown keys and malformed values are errors naming
/// the file and line. Snapshot sections (`[name]` and below) are kept
/// verbatim.
public struct VMConfig: Sendable, Equatable {
    public static let vmidRange = 100...999_999_999
    public static let defaultMemory = 512
    public static let memoryRange = 16...4_178_944
    /// `lock:` values Proxmox uses.
    public static let lockValues: Set<String> = [
        "backup", "clone", "create", "disk", "migrate", "rollback", "snapshot", "snapshot-delete", "suspending", "suspended",
    ]
    public static let ostypes: Set<String> = [
        "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24", "l26", "solaris",
    ]
    public static let scsiControllers: Set<String> = [
        "virtio-scsi-pci", "virtio-scsi-single", "lsi", "lsi53c810", "megasas", "pvscsi",
    ]
    /// Keys snapdump keeps but does not act on (so Proxmox configs load).
    public static let passiveKeys: Set<String> = ["onboot", "protection", "tags", "vmgenid", "smbios1", "meta", "startup", "parent"]

    public var vmid: Int
    public var name: String?
    /// MiB; nil means the default, 512.
    public var memory: Int?
    public var cores: Int?
    public var sockets: Int?
    /// Drives, kept in Proxmox's order: ide, sata, scsi, virtio, each by index.
    public private(set) var disks: [VMDisk] = []
    /// `unusedN` volumes (detached disks), by N.
    public var unused: [Int: String] = [:]
    /// `agent: 1` or `agent: enabled=1,freeze-fs-on-backup=0,…` (default key `enabled`).
    public var agent: PropertyString?
    public var lock: String?
    public var ostype: String?
    public var boot: String?
    public var bootdisk: String?
    /// `q35` (snapdump's default), `pc`, or a versioned `pc-q35-7.2` / `pc-i440fx-7.2`.
    public var machine: String?
    /// SCSI controller; default `virtio-scsi-pci`.
    public var scsihw: String?
    public var bios: String?
    public var description: String?
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    /// Passive keys (`onboot`, `tags`, …) as written.
    public var passive: [String: String] = [:]
    /// `[snapshot]` sections and below, verbatim.
    public var trailingSections: String = ""

    public init(vmid: Int) {
        self.vmid = vmid
    }

    // MARK: Derived values

    public var memoryMiB: Int { memory ?? VMConfig.defaultMemory }
    public var coreCount: Int { cores ?? 1 }
    public var socketCount: Int { sockets ?? 1 }
    public var agentEnabled: Bool { agent.flatMap { $0["enabled"] }.flatMap(VMConfig.parseBool) ?? false }
    /// Whether a backup should freeze the guest's filesystems (Proxmox's
    /// `freeze-fs-on-backup`, default on when the agent is enabled).
    public var agentFreezeOnBackup: Bool {
        agentEnabled && (agent?["freeze-fs-on-backup"].flatMap(VMConfig.parseBool) ?? true)
    }
    public var isQ35: Bool {
        guard let m = machine?.split(separator: "+").first else { return true }
        return m == "q35" || m.hasPrefix("pc-q35-")
    }
    /// Boot order device keys from `boot: order=a;b` (or `bootdisk`).
    public var bootOrder: [String] {
        if let boot, boot.hasPrefix("order="), let p = try? PropertyString.parse(boot, defaultKey: "legacy", what: "boot"),
           let order = p["order"] {
            return order.split(separator: ";").map(String.init)
        }
        return bootdisk.map { [$0] } ?? []
    }

    /// The drives, as (key, volid, options).
    public var diskList: [(key: String, volid: String, options: PropertyString)] {
        disks.map { ($0.key, $0.volid, $0.options) }
    }

    public func disk(_ key: String) -> VMDisk? { disks.first { $0.key == key } }

    /// Adds or replaces a drive, keeping the order.
    public mutating func setDisk(_ disk: VMDisk) {
        precondition(VMDisk.isDiskKey(disk.key), "not a disk key: \(disk.key)")
        disks.removeAll { $0.key == disk.key }
        disks.append(disk)
        disks.sort { ($0.bus, $0.index) < ($1.bus, $1.index) }
    }

    @discardableResult
    public mutating func removeDisk(_ key: String) -> VMDisk? {
        guard let i = disks.firstIndex(where: { $0.key == key }) else { return nil }
        return disks.remove(at: i)
    }

    // MARK: Parsing

    public static func isValidVMID(_ vmid: Int) -> Bool { vmidRange.contains(vmid) }

    /// The config of `vmid`; `GuestError(.notFound)` when there is none.
    public static func load(vmid: Int, paths: SnapdumpPaths) throws -> VMConfig {
        let path = paths.vmConfig(vmid)
        guard isValidVMID(vmid) else {
            throw ConfigError(file: path, "invalid VMID \(vmid) (allowed \(vmidRange.lowerBound)-\(vmidRange.upperBound))")
        }
        guard FileSystem.exists(path) else {
            throw GuestError(vmid: vmid, .notFound, "VM \(vmid) does not exist (no \(path))")
        }
        return try parse(FileSystem.readText(path), vmid: vmid, file: path)
    }

    /// Loads `<dir>/<vmid>.conf`, taking the VMID from the file name.
    public static func load(path: String) throws -> VMConfig {
        let base = (path as NSString).lastPathComponent
        guard base.hasSuffix(".conf"), let vmid = Int(base.dropLast(5)), String(vmid) == base.dropLast(5) else {
            throw ConfigError(file: path, "VM config file name must be '<vmid>.conf'")
        }
        return try parse(FileSystem.readText(path), vmid: vmid, file: path)
    }

    /// VMIDs with a config under `paths`, sorted.
    public static func list(paths: SnapdumpPaths) throws -> [Int] {
        guard FileSystem.isDirectory(paths.vmConfigDir) else { return [] }
        return try FileSystem.list(paths.vmConfigDir).compactMap { name in
            guard name.hasSuffix(".conf"), let id = Int(name.dropLast(5)), String(id) == name.dropLast(5), isValidVMID(id) else { return nil }
            return id
        }.sorted()
    }

    public static func exists(vmid: Int, paths: SnapdumpPaths) -> Bool {
        FileSystem.exists(paths.vmConfig(vmid))
    }

    /// Parses config text; `file` names it in errors.
    public static func parse(_ text: String, vmid: Int, file: String) throws -> VMConfig {
        guard isValidVMID(vmid) else {
            throw ConfigError(file: file, "invalid VMID \(vmid) (allowed \(vmidRange.lowerBound)-\(vmidRange.upperBound))")
        }
        let kv = try KeyValueConfig.parse(text, file: file)
        var config = VMConfig(vmid: vmid)
        var descriptionLines: [String] = []
        for line in kv.lines {
            switch line {
            case .comment(let c): descriptionLines.append(String(c.dropFirst()))
            case let .entry(key, value, n): try config.apply(key: key, value: value, file: file, line: n)
            }
        }
        if !descriptionLines.isEmpty {
            if config.description != nil {
                throw ConfigError(file: file, "description given both as '#' comments and as a 'description' key")
            }
            config.description = descriptionLines.joined(separator: "\n")
        }
        // Keep snapshot sections as they are.
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if let start = lines.firstIndex(where: { $0.drop(while: { $0 == " " || $0 == "\t" }).hasPrefix("[") }) {
            config.trailingSections = lines[start...].joined(separator: "\n")
            if !config.trailingSections.hasSuffix("\n") { config.trailingSections += "\n" }
        }
        return config
    }

    /// Checks one key and value with the rules `parse` applies, for values
    /// about to be written (`vm create --name`); `what` names the option.
    public static func check(key: String, value: String, what: String) throws {
        var scratch = VMConfig(vmid: vmidRange.lowerBound)
        try scratch.apply(key: key, value: value, file: what, line: nil)
    }

    private mutating func apply(key: String, value: String, file: String, line: Int?) throws {
        func fail(_ message: String) -> ConfigError { ConfigError(file: file, line: line, message) }
        func int(_ range: ClosedRange<Int>) throws -> Int {
            guard let n = Int(value), range.contains(n) else {
                throw fail("\(key): expected an integer in \(range.lowerBound)-\(range.upperBound), got '\(value)'")
            }
            return n
        }
        func absolutePath() throws -> String {
            guard value.hasPrefix("/"), value.count > 1 else { throw fail("\(key): expected an absolute path, got '\(value)'") }
            return value
        }
        if value.isEmpty && key != "append" { throw fail("\(key): empty value") }
        if let problem = ConfigValue.problem(value) { throw fail("\(key): \(problem)") }

        if VMDisk.isDiskKey(key) {
            setDisk(try VMDisk.parse(key: key, value: value, file: file, line: line))
            return
        }
        if key.hasPrefix("unused"), let n = Int(key.dropFirst(6)), String(n) == key.dropFirst(6), (0...255).contains(n) {
            guard VMDisk.isValidVolumeID(value) else { throw fail("\(key): invalid volume '\(value)'") }
            unused[n] = value
            return
        }
        switch key {
        case "name":
            guard VMConfig.isValidName(value) else { throw fail("name: '\(value)' is not a valid DNS name") }
            name = value
        case "memory":
            // Proxmox 8 also writes `memory: current=2048`.
            var v = value
            if v.hasPrefix("current=") { v = String(v.dropFirst(8)) }
            // qemu-server's bounds (16 MiB to 4178944 MiB): the MiB are multiplied into bytes downstream.
            guard let n = Int(v), VMConfig.memoryRange.contains(n) else {
                throw fail("memory: expected MiB (\(VMConfig.memoryRange.lowerBound)-\(VMConfig.memoryRange.upperBound)), got '\(value)'")
            }
            memory = n
        case "cores": cores = try int(1...8192)
        case "sockets": sockets = try int(1...64)
        case "agent":
            let p: PropertyString
            do { p = try PropertyString.parse(value, defaultKey: "enabled", what: "agent") } catch let e as ConfigError {
                throw fail("agent: \(e.message)")
            }
            for item in p.items {
                switch item.key {
                case "enabled", "fstrim_cloned_disks", "freeze-fs-on-backup":
                    guard VMConfig.parseBool(item.value) != nil else { throw fail("agent: '\(item.key)' must be 0 or 1, got '\(item.value)'") }
                case "type":
                    guard ["virtio", "isa"].contains(item.value) else { throw fail("agent: unknown type '\(item.value)'") }
                default:
                    throw fail("agent: unknown option '\(item.key)'")
                }
            }
            agent = p
        case "lock":
            guard VMConfig.lockValues.contains(value) else {
                throw fail("lock: unknown lock '\(value)' (known: \(VMConfig.lockValues.sorted().joined(separator: ", ")))")
            }
            lock = value
        case "ostype":
            guard VMConfig.ostypes.contains(value) else { throw fail("ostype: unknown OS type '\(value)'") }
            ostype = value
        case "boot":
            if value.allSatisfy({ "acdn".contains($0) }) && value.count <= 4 {
                boot = value
            } else {
                let p: PropertyString
                do { p = try PropertyString.parse(value, defaultKey: "legacy", what: "boot") } catch let e as ConfigError {
                    throw fail("boot: \(e.message)")
                }
                for item in p.items {
                    switch item.key {
                    case "order":
                        let devices = item.value.split(separator: ";", omittingEmptySubsequences: false)
                        guard devices.allSatisfy({ d in
                            let letters = d.prefix(while: { $0.isLetter })
                            return !letters.isEmpty && letters.count < d.count && d.dropFirst(letters.count).allSatisfy(\.isNumber)
                        }) else { throw fail("boot: invalid order '\(item.value)'") }
                    case "legacy":
                        guard item.value.allSatisfy({ "acdn".contains($0) }) else { throw fail("boot: invalid legacy order '\(item.value)'") }
                    default:
                        throw fail("boot: unknown option '\(item.key)'")
                    }
                }
                boot = value
            }
        case "bootdisk":
            guard VMDisk.isDiskKey(value) else { throw fail("bootdisk: '\(value)' is not a disk key") }
            bootdisk = value
        case "machine":
            guard VMConfig.isValidMachine(value) else {
                throw fail("machine: unsupported machine type '\(value)' (q35, pc, pc-q35-X.Y, pc-i440fx-X.Y)")
            }
            machine = value
        case "scsihw":
            guard VMConfig.scsiControllers.contains(value) else { throw fail("scsihw: unknown SCSI controller '\(value)'") }
            scsihw = value
        case "bios":
            guard value == "seabios" else { throw fail("bios: only 'seabios' is supported, got '\(value)'") }
            bios = value
        case "description":
            description = value
        case "kernel": kernel = try absolutePath()
        case "initrd": initrd = try absolutePath()
        case "append": append = value
        case _ where VMConfig.passiveKeys.contains(key):
            if key == "onboot" || key == "protection" {
                guard VMConfig.parseBool(value) != nil else { throw fail("\(key): expected 0 or 1, got '\(value)'") }
            }
            passive[key] = value
        default:
            throw fail("unknown or unsupported key '\(key)'")
        }
    }

    // MARK: Writing

    /// The config text: description comments, then keys sorted (as Proxmox
    /// writes them), then any snapshot sections.
    public func serialized() -> String {
        var out = ""
        if let description {
            for l in description.split(separator: "\n", omittingEmptySubsequences: false) { out += "#\(l)\n" }
        }
        for (k, v) in entries { out += v.isEmpty ? "\(k):\n" : "\(k): \(v)\n" }
        if !trailingSections.isEmpty {
            out += "\n" + trailingSections
        }
        return out
    }

    /// The `key: value` entries, sorted by key as Proxmox writes them.
    var entries: [(key: String, value: String)] {
        var entries: [(String, String)] = []
        func add(_ k: String, _ v: String?) { if let v { entries.append((k, v)) } }
        add("name", name)
        add("memory", memory.map(String.init))
        add("cores", cores.map(String.init))
        add("sockets", sockets.map(String.init))
        add("agent", agent?.serialized(defaultKey: "enabled"))
        add("lock", lock)
        add("ostype", ostype)
        add("boot", boot)
        add("bootdisk", bootdisk)
        add("machine", machine)
        add("scsihw", scsihw)
        add("bios", bios)
        add("kernel", kernel)
        add("initrd", initrd)
        add("append", append)
        for d in disks { add(d.key, d.value) }
        for (n, v) in unused { add("unused\(n)", v) }
        for (k, v) in passive { add(k, v) }
        entries.sort { $0.0 < $1.0 }
        return entries
    }

    /// Checks every value with the rules `parse` applies, so what is written
    /// reads back (`name: bad name`, `cores: 0`, or a newline that would
    /// inject a `scsi5: /dev/vda` line, are refused before writing).
    public func validate(file: String) throws {
        for (k, v) in entries { try VMConfig.check(key: k, value: v, what: file) }
    }

    /// Writes the config atomically to `<config-dir>/qemu/<vmid>.conf`.
    public func save(paths: SnapdumpPaths) throws {
        try FileSystem.createDirectory(paths.vmConfigDir)
        try save(to: paths.vmConfig(vmid))
    }

    public func save(to path: String) throws {
        try validate(file: path)
        try FileSystem.writeAtomically(path, serialized())
    }

    // MARK: Value rules

    /// Proxmox booleans: 1/0, on/off, yes/no, true/false.
    public static func parseBool(_ s: String) -> Bool? { ConfigValue.bool(s) }

    /// A DNS name: labels of letters, digits and inner `-`, joined by `.`.
    public static func isValidName(_ s: String) -> Bool {
        guard !s.isEmpty, s.count <= 253 else { return false }
        return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            guard let f = label.first, let l = label.last, label.count <= 63 else { return false }
            return f.isASCII && (f.isLetter || f.isNumber) && l.isASCII && (l.isLetter || l.isNumber)
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }

    static func isValidMachine(_ s: String) -> Bool {
        let base = s.split(separator: "+", maxSplits: 1).first.map(String.init) ?? s
        if base == "q35" || base == "pc" { return true }
        for prefix in ["pc-q35-", "pc-i440fx-"] where base.hasPrefix(prefix) {
            let version = base.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false)
            return version.count == 2 && version.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
        }
        return false
    }
}
