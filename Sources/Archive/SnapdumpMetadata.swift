import Foundation

/// The `snapdump.json` config blob: per device its size and content digest
/// (see `DeviceDigest`), and how the backup was taken. VMA readers that do
/// not know it ignore it.
public struct SnapdumpMetadata: Codable, Hashable, Sendable {
    public static let blobName = "snapdump.json"
    /// A streamed archive (`backup --stdout`) cannot carry digests known only
    /// at the end; it records how it was taken under this name instead, with
    /// no devices, so no reader mistakes it for a damaged `snapdump.json`.
    public static let streamBlobName = "snapdump-stream.json"
    public static let currentVersion = 1

    public struct Device: Codable, Hashable, Sendable {
        /// `drive-scsi0`, as in the VMA header.
        public var name: String
        public var size: UInt64
        /// Hex SHA-256 over the SHA-256s of the device's chunks.
        public var sha256: String
        /// Chunk size of the digest: 4194304.
        public var chunkSize: Int

        public init(name: String, size: UInt64, sha256: SHA256Digest, chunkSize: Int = DeviceDigest.chunkSize) {
            self.name = name
            self.size = size
            self.sha256 = sha256.hex
            self.chunkSize = chunkSize
        }

        public var digest: SHA256Digest? { SHA256Digest(hex: sha256) }
    }

    public var version: Int
    public var devices: [Device]
    /// The mode actually used: `stop`, `suspend` or `snapshot`.
    public var mode: String
    /// How long the guest was paused, frozen or stopped, in milliseconds.
    public var downtimeMs: Int64?
    /// Snapshot mode: milliseconds of each step inside the freeze window (`fs-freeze`, `snapshot`, `fs-thaw`, …).
    public var downtimeParts: [String: Int64]?
    /// Backup start, seconds since the epoch.
    public var startTime: Int64
    public var snapdumpVersion: String

    public init(devices: [Device], mode: String, downtimeMs: Int64?, startTime: Int64, snapdumpVersion: String,
                downtimeParts: [String: Int64]? = nil) {
        self.version = Self.currentVersion
        self.downtimeParts = downtimeParts
        self.devices = devices
        self.mode = mode
        self.downtimeMs = downtimeMs
        self.startTime = startTime
        self.snapdumpVersion = snapdumpVersion
    }

    public func device(named name: String) -> Device? { devices.first { $0.name == name } }

    /// Compact JSON with sorted keys (stable bytes for the same value).
    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(self))
    }

    public static let modes: Set<String> = ["stop", "suspend", "snapshot"]

    /// Parses and checks the blob: its strings are printed by `vma list`, so
    /// each must be what snapdump writes (a mode, a device name, 64 hex digits).
    public static func decode(_ bytes: [UInt8]) throws(Invalid) -> SnapdumpMetadata {
        let m: SnapdumpMetadata
        do {
            m = try JSONDecoder().decode(SnapdumpMetadata.self, from: Data(bytes))
        } catch let e as DecodingError {
            throw Invalid(message: Self.describe(e))
        } catch {
            throw Invalid(message: "\(error)")
        }
        func bad(_ why: String) -> Invalid { Invalid(message: why) }
        guard m.version == currentVersion else { throw bad("unsupported snapdump.json version \(m.version)") }
        guard modes.contains(m.mode) else { throw bad("unknown mode \(String(reflecting: m.mode))") }
        for d in m.devices {
            guard VMAFormat.isValidDeviceName(d.name) else { throw bad("bad device name \(String(reflecting: d.name))") }
            guard d.digest != nil else { throw bad("sha256 of \(d.name) is not 64 hex digits") }
        }
        return m
    }

    /// A `snapdump.json` that cannot be used: why, in one line.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    private static func describe(_ e: DecodingError) -> String {
        func at(_ c: DecodingError.Context) -> String {
            let path = c.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            return (path.isEmpty ? "" : "\(path): ") + c.debugDescription
        }
        switch e {
        case .dataCorrupted(let c): return at(c)
        case .keyNotFound(let k, let c): return at(c) + " (key \(k.stringValue))"
        case .typeMismatch(_, let c), .valueNotFound(_, let c): return at(c)
        @unknown default: return "\(e)"
        }
    }

    /// A size to reserve in the header for `snapdump.json` of `deviceCount`
    /// devices: room for the fixed fields and ~200 bytes per device.
    public static func reservedSize(deviceCount: Int) -> Int {
        min(VMAFormat.maxBlobSize, 512 + 256 * deviceCount)
    }

    /// `json` padded to exactly `size` bytes by inserting spaces before its
    /// closing brace, so it stays one valid JSON object; nil if it is longer.
    public static func pad(_ json: [UInt8], to size: Int) -> [UInt8]? {
        guard json.count <= size else { return nil }
        guard json.count < size else { return json }
        guard let close = json.lastIndex(of: UInt8(ascii: "}")) else {
            return json + [UInt8](repeating: 0x20, count: size - json.count)
        }
        var out = Array(json[..<close])
        out += [UInt8](repeating: 0x20, count: size - json.count)
        out += json[close...]
        return out
    }
}
