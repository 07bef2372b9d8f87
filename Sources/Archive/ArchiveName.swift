import Foundation
import SnapdumpSystem

/// Proxmox's backup file names: `vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS>.vma[.zst|.gz|.lzo]`
/// (local time), written as `….vma.dat`, with `….log`, `<archive>.notes` and
/// `<archive>.protected` beside it.
public struct ArchiveName: Hashable, Sendable, CustomStringConvertible {
    public var vmid: UInt32
    /// The timestamp as in the name: `2025_01_31-23_59_07`.
    public var timestamp: String
    public var compression: Compression.Kind

    /// The name for a backup of `vmid` started at `date`, in `timeZone`
    /// (nil: local time as the C library reads `TZ` and /etc/localtime, as vzdump).
    public init(vmid: UInt32, date: Date, compression: Compression.Kind, timeZone: TimeZone? = nil) {
        self.vmid = vmid
        self.timestamp = CivilTime(date, CivilTime.Zone(timeZone)).underscored
        self.compression = compression
    }

    /// Parses a file name (no directory). Names that do not match exactly
    /// give nil, so they are never pruned.
    public init?(fileName: String) {
        let prefix = "vzdump-qemu-"
        guard fileName.hasPrefix(prefix) else { return nil }
        let rest = fileName.dropFirst(prefix.count)
        guard let dash = rest.firstIndex(of: "-") else { return nil }
        let idText = rest[..<dash]
        guard !idText.isEmpty, idText.allSatisfy(\.isASCIIDigit), let id = UInt32(idText) else { return nil }
        let afterID = rest[rest.index(after: dash)...]
        guard afterID.count >= 19 else { return nil }
        let ts = String(afterID.prefix(19))
        guard Self.isTimestamp(ts) else { return nil }
        let ext = afterID.dropFirst(19)
        guard ext.hasPrefix(".vma"), let kind = Compression.Kind(fileExtension: String(ext.dropFirst(4))) else { return nil }
        vmid = id
        timestamp = ts
        compression = kind
    }

    /// `YYYY_MM_DD-HH_MM_SS`.
    static func isTimestamp(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard u.count == 19 else { return false }
        for (i, c) in u.enumerated() {
            switch i {
            case 4, 7, 13, 16: if c != UInt8(ascii: "_") { return false }
            case 10: if c != UInt8(ascii: "-") { return false }
            default: if !(48...57).contains(c) { return false }
            }
        }
        return true
    }

    /// The backup start time the name encodes, read in `timeZone` (nil: local
    /// time); nil for impossible dates (month 13, 31 February…).
    public func date(timeZone: TimeZone? = nil) -> Date? {
        guard let c = CivilTime(underscored: timestamp) else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(c.seconds(in: CivilTime.Zone(timeZone))))
    }

    var stem: String { "vzdump-qemu-\(vmid)-\(timestamp)" }

    /// `vzdump-qemu-100-2025_01_31-23_59_07.vma.zst`
    public var fileName: String { stem + ".vma" + compression.fileExtension }
    /// The name while writing: the last extension replaced by `.dat` (`….vma.dat`; `.vma` itself becomes `….dat`).
    public var temporaryName: String {
        compression == .none ? stem + ".dat" : stem + ".vma.dat"
    }
    /// `vzdump-qemu-100-2025_01_31-23_59_07.log`
    public var logName: String { stem + ".log" }
    /// `<archive>.notes`
    public var notesName: String { fileName + ".notes" }
    /// `<archive>.protected`
    public var protectedName: String { fileName + ".protected" }

    public var description: String { fileName }
}

private extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}
