import Archive
import Foundation

/// One backup archive in a dump directory, with what lives beside it:
/// `<archive>.notes`, `<archive>.protected` and the task log `<stem>.log`.
public struct BackupArchive: Sendable, Hashable {
    /// The dump directory (`<storage path>/dump` or `--dumpdir`).
    public var directory: String
    /// `vzdump-qemu-100-2025_01_31-23_59_07.vma.zst`
    public var fileName: String
    public var vmid: Int
    /// The parsed standard name; nil for a renamed archive
    /// (`vzdump-qemu-100-before-upgrade.vma.zst`), which prune never touches.
    public var name: ArchiveName?
    /// Backup time: from the name (local time), or the file's mtime for a renamed archive.
    public var date: Date
    public var size: UInt64
    public var isProtected: Bool
    /// The whole `.notes` file, nil when there is none.
    public var notes: String?

    public init(directory: String, fileName: String, vmid: Int, name: ArchiveName?, date: Date,
                size: UInt64, isProtected: Bool, notes: String?) {
        self.directory = directory
        self.fileName = fileName
        self.vmid = vmid
        self.name = name
        self.date = date
        self.size = size
        self.isProtected = isProtected
        self.notes = notes
    }

    public var path: String { directory + "/" + fileName }
    public var isStandardName: Bool { name != nil }
    public var compression: Compression.Kind {
        Compression.Kind.allCases.first { $0 != .none && fileName.hasSuffix(".vma" + $0.fileExtension) } ?? .none
    }

    /// The name without `.vma[.zst|.gz|.lzo]`: `vzdump-qemu-100-2025_01_31-23_59_07`.
    public var stem: String {
        let ext = ".vma" + compression.fileExtension
        return String(fileName.dropLast(ext.count))
    }

    public var logPath: String { directory + "/" + stem + ".log" }
    public var notesPath: String { path + ".notes" }
    public var protectedPath: String { path + ".protected" }

    /// The first line of the notes (what `backup list` shows).
    public var notesFirstLine: String? {
        guard let notes else { return nil }
        let line = notes.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return line.hasSuffix("\r") ? String(line.dropLast()) : line
    }

    /// The Proxmox volume id on a storage: `local:backup/vzdump-qemu-100-….vma.zst`.
    public func volid(storage: String) -> String { "\(storage):backup/\(fileName)" }

    /// Splits a backup file name: `vzdump-qemu-<vmid>-<anything>.vma[.zst|.gz|.lzo]`.
    /// Anything else (`.dat` files being written, logs, notes, foreign files) gives nil.
    public static func parseFileName(_ fileName: String) -> (vmid: Int, standard: ArchiveName?)? {
        let prefix = "vzdump-qemu-"
        guard fileName.hasPrefix(prefix), !fileName.contains("/") else { return nil }
        let rest = fileName.dropFirst(prefix.count)
        guard let dash = rest.firstIndex(of: "-") else { return nil }
        let idText = rest[..<dash]
        guard !idText.isEmpty, idText.utf8.allSatisfy({ (48...57).contains($0) }), let vmid = Int(idText) else { return nil }
        let tail = rest[rest.index(after: dash)...]
        let ext = Compression.Kind.allCases.map { ".vma" + $0.fileExtension }.first { tail.hasSuffix($0) }
        guard let ext, tail.count > ext.count else { return nil }
        return (vmid, ArchiveName(fileName: fileName))
    }
}
