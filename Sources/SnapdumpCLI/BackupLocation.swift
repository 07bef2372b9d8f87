import ArgumentParser
import Backup
import Foundation
import SnapdumpSystem
import Repository
import Storage

/// Where the `backup …` and `prune` commands find archives: a storage's
/// dump directory, or a `--dumpdir`; and single archives named by volume id
/// (`local:backup/vzdump-qemu-100-….vma.zst`) or by path.
enum BackupLocation {
    /// The dump directory of storage `storeid` (content `backup`), or `dumpdir`; exactly one of them.
    static func dumpDirectory(storeid: String?, dumpdir: String?, global: GlobalOptions) throws -> DumpDirectory {
        switch (storeid, dumpdir) {
        case let (id?, nil):
            return DumpDirectory(path: try BackupTarget.storage(id).directory(storages: global.storages()), storage: id)
        case let (nil, dir?):
            return DumpDirectory(path: dir.hasPrefix("/") ? dir : FileManagerCWD.absolute(dir))
        default:
            throw ValidationError("name a storage, or --dumpdir DIR (not both)")
        }
    }

    /// An archive given as `storeid:backup/<file>` or as a path.
    static func archive(_ text: String, global: GlobalOptions) throws -> (DumpDirectory, BackupArchive) {
        if !text.hasPrefix("/") && !text.hasPrefix("."), let colon = text.firstIndex(of: ":") {
            let storeid = String(text[..<colon])
            let volname = String(text[text.index(after: colon)...])
            guard volname.hasPrefix("backup/"), !volname.dropFirst(7).contains("/") else {
                throw ValidationError("'\(text)' is not a backup volume id (\(storeid):backup/vzdump-qemu-<vmid>-….vma.zst)")
            }
            let dump = try dumpDirectory(storeid: storeid, dumpdir: nil, global: global)
            return (dump, try dump.archive(named: String(volname.dropFirst(7))))
        }
        let path = text.hasPrefix("/") ? text : FileManagerCWD.absolute(text)
        let dir = (path as NSString).deletingLastPathComponent
        let dump = DumpDirectory(path: dir)
        return (dump, try dump.archive(named: (path as NSString).lastPathComponent))
    }

    /// A repository backup named as `repo1:backup/vm/100/<time>` (nil for anything else): its
    /// storage opened with its key, and the snapshot, which must exist.
    static func repositoryBackup(_ text: String, global: GlobalOptions) throws -> (RepositoryStore, SnapshotName)? {
        guard !text.hasPrefix("/"), !text.hasPrefix("."), let volume = RepositoryVolume(parsing: text) else { return nil }
        let store = try repositoryStore(volume.storage, global: global)
        guard store.repository.exists(volume.snapshot) else {
            throw ValidationError("backup '\(volume)' does not exist (no finished snapshot \(volume.snapshot) in \(store.repository.root))")
        }
        return (store, volume.snapshot)
    }

    /// Repository storage `storeid` as the backup commands use it.
    static func repositoryStore(_ storeid: String, global: GlobalOptions) throws -> RepositoryStore {
        let def = try RepositoryAccess.definition(storeid, global)
        return try RepositoryStore(storage: storeid, path: def.path!, encryptionKey: def.encryptionKey)
    }

    /// Whether `storeid` names a repository storage.
    static func isRepository(_ storeid: String?, global: GlobalOptions) throws -> Bool {
        guard let storeid else { return false }
        return try global.storages().config.storage(storeid).type == .repo
    }

    /// `2026-11-30 02:00:00`, local time.
    static func time(_ date: Date) -> String { CivilTime(date, .local).spaced }
}

/// Writes a line to stderr (warnings and progress; stdout carries the result).
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
