import Foundation
import Repository

/// The steps around one guest's backup that vzdump takes besides writing
/// the archive, for the engine (`VMBackup`) to call:
///
/// 1. `checkBeforeBackup` — before the guest is touched: the `remove 0`
///    retention limit.
/// 2. `afterCommit` — once the archive has its final name (and the guest
///    is running again): notes, protection, then prune of this guest's
///    backups, logged in vzdump's words.
public enum BackupLifecycle {
    /// Refuses the backup when `remove 0` and the guest's unprotected
    /// archives in `dumpdir` already reach the retention's sum of keep values
    /// ("There is a max backup limit of N …"). Nothing to do otherwise.
    public static func checkBeforeBackup(vmid: Int, dumpdir: String, storage: String?, settings: BackupSettings) throws {
        try DumpDirectory(path: dumpdir, storage: storage)
            .checkBackupLimit(vmid: vmid, policy: settings.pruneBackups, remove: settings.remove, protected: settings.protected)
    }

    /// After the archive at `archivePath` was committed:
    ///
    /// - with a notes template, renders it and writes `<archive>.notes`
    ///   ("adding notes to backup"; a failure is only a warning, as in vzdump);
    /// - with `protected`, creates `<archive>.protected` ("marking backup as
    ///   protected"; a failure throws: the backup failed);
    /// - with `remove`, prunes the archives of `vmid` in the archive's
    ///   directory ("prune older backups with retention: …", "removing backup
    ///   '…'", "pruned N backup(s) …"); only this guest's archives are
    ///   considered, names not matching the archive pattern are never
    ///   touched, and a failed removal throws after the others were tried.
    ///
    /// `guestName` is the VM config's `name`; `storage` the backup storage id
    /// (nil for `--dumpdir`), used for volume ids in the log.
    public static func afterCommit(archivePath: String, vmid: Int, guestName: String?, storage: String?,
                                   settings: BackupSettings, log: TaskLog,
                                   node: String = NotesTemplate.nodeName(), timeZone: TimeZone? = nil) throws {
        let dir = (archivePath as NSString).deletingLastPathComponent
        let dump = DumpDirectory(path: dir.isEmpty ? "." : dir, storage: storage, timeZone: timeZone)

        if let template = settings.notesTemplate, !template.isEmpty {
            log.info("adding notes to backup")
            do {
                let notes = try NotesTemplate.render(template, .init(vmid: vmid, guestName: guestName, node: node))
                try DumpDirectory.writeNotes(archivePath: archivePath, notes)
            } catch {
                log.warn("unable to add notes - \(error)")
            }
        }

        if settings.protected {
            log.info("marking backup as protected")
            do {
                let fileName = (archivePath as NSString).lastPathComponent
                try dump.setProtected(try dump.archive(named: fileName), true)
            } catch {
                throw BackupError("unable to set protected flag - \(error)")
            }
        }

        if settings.remove && !settings.pruneBackups.keepsEverything {
            log.info("prune older backups with retention: \(settings.pruneBackups)")
            let results = try dump.prune(vmid: vmid, policy: settings.pruneBackups) { level, message in
                log.log(level, message)
            }
            let pruned = results.filter { $0.mark == .remove }.count
            log.info("pruned \(pruned) backup(s)" + (pruned > 0 ? " not covered by keep-retention policy" : ""))
        }
    }

    /// `afterCommit` for a repository snapshot (its manifest is written):
    /// notes into the manifest's unprotected part, `.protected`, then prune
    /// of this guest's snapshots in the repository — same rules and lines.
    public static func afterCommit(snapshot: SnapshotName, in store: RepositoryStore, guestName: String?,
                                   settings: BackupSettings, log: TaskLog, node: String = NotesTemplate.nodeName()) throws {
        let vmid = snapshot.vmid ?? 0
        if let template = settings.notesTemplate, !template.isEmpty {
            log.info("adding notes to backup")
            do {
                try store.repository.setNotes(snapshot, try NotesTemplate.render(template, .init(vmid: vmid, guestName: guestName, node: node)))
            } catch {
                log.warn("unable to add notes - \(error)")
            }
        }
        if settings.protected {
            log.info("marking backup as protected")
            do { try store.repository.setProtected(snapshot, true) } catch {
                throw BackupError("unable to set protected flag - \(error)")
            }
        }
        if settings.remove && !settings.pruneBackups.keepsEverything {
            log.info("prune older backups with retention: \(settings.pruneBackups)")
            let results = try store.prune(vmid: vmid, policy: settings.pruneBackups) { level, message in log.log(level, message) }
            let pruned = results.filter { $0.mark == .remove }.count
            log.info("pruned \(pruned) backup(s)" + (pruned > 0 ? " not covered by keep-retention policy" : ""))
        }
    }
}
