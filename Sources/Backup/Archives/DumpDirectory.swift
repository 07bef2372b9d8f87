import Archive
import Foundation
import SnapdumpSystem

/// A directory of vzdump archives (`<storage path>/dump` or `--dumpdir`):
/// listing per guest, removal, protection, notes, and prune — what Proxmox's
/// storage layer does for content `backup`.
public struct DumpDirectory: Sendable {
    public let path: String
    /// The storage the directory belongs to, for volume ids in logs and
    /// listings; nil for a plain `--dumpdir`.
    public let storage: String?
    /// Archive names carry local time; they are read in this zone (nil: the
    /// C library's local time, `TZ` else /etc/localtime, as vzdump's Perl).
    public let timeZone: TimeZone?

    public init(path: String, storage: String? = nil, timeZone: TimeZone? = nil) {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        self.path = p
        self.storage = storage
        self.timeZone = timeZone
    }

    /// How an archive is named in messages: its volume id on a storage, else its path.
    public func label(_ archive: BackupArchive) -> String {
        storage.map { archive.volid(storage: $0) } ?? archive.path
    }

    /// The archives of `vmid` (all guests when nil), newest first; equal
    /// times in name order. A missing directory holds no archives.
    public func archives(vmid: Int? = nil) throws -> [BackupArchive] {
        guard FileSystem.exists(path) else { return [] }
        guard FileSystem.isDirectory(path) else {
            throw BackupError("dump directory '\(path)' is not a directory")
        }
        let names: [String]
        do { names = try FileSystem.list(path) } catch { throw BackupError("cannot list dump directory '\(path)': \(error)") }
        let present = Set(names)
        var result: [BackupArchive] = []
        for fileName in names {
            guard let parsed = BackupArchive.parseFileName(fileName) else { continue }
            if let vmid, parsed.vmid != vmid { continue }
            let full = path + "/" + fileName
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: full),
                  (attrs[.type] as? FileAttributeType) == .typeRegular else { continue }
            let size = (attrs[.size] as? NSNumber)?.uint64Value ?? 0
            let mtime = (attrs[.modificationDate] as? Date) ?? Date(timeIntervalSince1970: 0)
            var notes: String?
            if present.contains(fileName + ".notes") {
                notes = try? FileSystem.readText(full + ".notes")
            }
            result.append(BackupArchive(
                directory: path, fileName: fileName, vmid: parsed.vmid, name: parsed.standard,
                date: parsed.standard?.date(timeZone: timeZone) ?? mtime, size: size,
                isProtected: present.contains(fileName + ".protected"), notes: notes))
        }
        return result.sorted { $0.date != $1.date ? $0.date > $1.date : $0.fileName < $1.fileName }
    }

    /// The archive called `fileName` in this directory.
    public func archive(named fileName: String) throws -> BackupArchive {
        guard let parsed = BackupArchive.parseFileName(fileName) else {
            throw BackupError("'\(fileName)' is not a backup archive name (vzdump-qemu-<vmid>-….vma[.zst|.gz|.lzo])")
        }
        guard let a = try archives(vmid: parsed.vmid).first(where: { $0.fileName == fileName }) else {
            throw BackupError("backup archive '\(path)/\(fileName)' does not exist")
        }
        return a
    }

    /// Removes the archive with its `.log` and `.notes` (Proxmox's
    /// `archive_remove`). Refused while the archive is protected. Returns
    /// warnings for side files that could not be removed.
    @discardableResult
    public func remove(_ archive: BackupArchive) throws -> [String] {
        if FileSystem.exists(archive.protectedPath) {
            throw BackupError("cannot remove protected archive '\(archive.path)'")
        }
        do { try FileSystem.remove(archive.path) } catch {
            throw BackupError("removing archive \(archive.path) failed: \(error)")
        }
        var warnings: [String] = []
        for side in [archive.logPath, archive.notesPath] {
            do { try FileSystem.remove(side) } catch { warnings.append("Removing \(side) failed: \(error)") }
        }
        try? FileSystem.syncDirectory(path)
        return warnings
    }

    /// Creates or removes the empty `<archive>.protected` marker.
    public func setProtected(_ archive: BackupArchive, _ protected: Bool) throws {
        let marker = archive.protectedPath
        if protected == FileSystem.exists(marker) { return }
        do {
            if protected {
                let f = try File.open(marker, O_WRONLY | O_CREAT)
                try f.close()
            } else {
                try FileSystem.remove(marker)
            }
            try FileSystem.syncDirectory(path)
        } catch {
            throw BackupError(protected ? "unable to create protection file '\(marker)' - \(error)"
                                        : "could not delete protection file '\(marker)' - \(error)")
        }
    }

    /// Writes `<archive>.notes` (UTF-8, atomically); nil or empty text removes it.
    public func setNotes(_ archive: BackupArchive, _ text: String?) throws {
        try Self.writeNotes(archivePath: archive.path, text)
    }

    static func writeNotes(archivePath: String, _ text: String?) throws {
        let notesPath = archivePath + ".notes"
        do {
            if let text, !text.isEmpty {
                try FileSystem.writeAtomically(notesPath, text)
            } else {
                try FileSystem.remove(notesPath)
            }
        } catch {
            throw BackupError("could not write notes '\(notesPath)' - \(error)")
        }
    }

    /// One archive and what prune does (or did) with it.
    public struct PruneResult: Sendable {
        public var archive: BackupArchive
        public var mark: PruneMark
    }

    /// The prune marks for the archives of `vmid` (every guest, each its own
    /// group, when nil): Proxmox's `prune_backups`. Renamed archives are
    /// `renamed`, protected ones `protected`; neither is ever removed.
    /// Newest first.
    public func pruneMarks(vmid: Int?, policy: PrunePolicy) throws -> [PruneResult] {
        let all = try archives(vmid: vmid)
        var marks: [PruneMark?] = all.map { a in a.isProtected ? .protected : (a.isStandardName ? nil : .renamed) }
        let groups = Dictionary(grouping: all.indices.filter { all[$0].isStandardName }, by: { all[$0].vmid })
        for (_, indices) in groups {
            let m = policy.mark(indices.map { PrunePolicy.Entry(date: all[$0].date, isProtected: all[$0].isProtected) },
                                timeZone: timeZone)
            for (k, i) in indices.enumerated() { marks[i] = m[k] }
        }
        return all.indices.map { PruneResult(archive: all[$0], mark: marks[$0] ?? .keep) }
    }

    /// Prunes: computes the marks and, unless `dryRun`, removes what is
    /// marked `remove`, logging "removing backup '…'" for each. A removal
    /// that fails is logged and the others still run; then it throws
    /// "error pruning backups - check log".
    @discardableResult
    public func prune(vmid: Int?, policy: PrunePolicy, dryRun: Bool = false,
                      log: (TaskLog.Level, String) -> Void = { _, _ in }) throws -> [PruneResult] {
        let results = try pruneMarks(vmid: vmid, policy: policy)
        guard !dryRun else { return results }
        try PrunePolicy.removeMarked(results.map { ($0.archive, $0.mark) }, label: label, remove: remove, log: log)
        return results
    }

    /// vzdump's `remove 0` limit (`PrunePolicy.checkBackupLimit`), over the guest's archives.
    public func checkBackupLimit(vmid: Int, policy: PrunePolicy, remove: Bool, protected: Bool) throws {
        try policy.checkBackupLimit(remove: remove, protected: protected) {
            try archives(vmid: vmid).filter { !$0.isProtected }.count
        }
    }
}
