import Foundation
import Guest
import Repository
import SnapdumpConfig
import SnapdumpSystem
import Storage

/// Incremental forever for a stop- or snapshot-mode backup into a repository (issue 11;
/// the call sequence is in `Sources/Repository/README.md`). The storage
/// snapshot the backup reads is named `snapdump_base_<time>_<repository>` and kept after
/// the manifest as the base of the next backup; the next backup asks the
/// storage which chunks changed since that base and reads only those.
///
/// Safety: the old base is dropped only after the new manifest exists (the
/// engine does it then); a run that fails removes its new snapshot with the
/// others (`VMBackup.settle`); a base a killed run left is dropped here, before
/// the next snapshot, keeping the one the last finished backup recorded.
struct IncrementalForever {
    /// The name of the snapshot this backup takes and keeps.
    let newBase: String
    /// The repository storage: only its bases are this backup's to keep or drop.
    let repository: String
    /// Per disk key: what the previous backup offers (`.incremental`) or why this disk is read whole.
    let previous: [String: IncrementalBase]
    /// Per disk key: backups since the disk was last read whole, as the previous manifest records it.
    let previousRuns: [String: Int]
    /// Per volume: its base snapshots left after `prepare` (listed there, less what it removed), so
    /// `dropOldBases` need not list them again (a `zfs list` round trip); absent: listed then.
    var remaining: [VolumeID: [String]] = [:]

    /// What this backup records for a disk (`full-every`): one more than the previous one if read incrementally, else 0.
    func incrementalRuns(_ d: DiskPlan, incremental: Bool) -> Int {
        incremental ? (previousRuns[d.key] ?? 0) + 1 : 0
    }

    /// Per disk key: what a tracker outside the storage found before the read (qcow2 dirty bitmaps, `QCOW2Incremental`).
    var tracked: [String: Read] = [:]

    /// Storages whose `changedChunks` can answer for this disk (else a kept base only costs space).
    static func tracks(_ d: DiskPlan) -> Bool {
        switch d.plugin.definition.type {
        case .btrfs, .zfspool, .rbd, .lvmthin: return true
        case .dir: return d.plugin.definition.reflink && d.format == .raw
        case .lvm, .repo: return false
        }
    }

    /// Decides per disk before the snapshot and drops bases nobody recorded
    /// (a killed run's new snapshot, an older base of a chain that went on without it).
    /// `full` (`--full`) or `fullEvery` reached reads a disk whole; its recorded base is
    /// kept all the same until this backup's manifest exists. `repositories`: the repository
    /// storages configured; bases of any other (a repository storage removed) go too.
    /// `listed`: snapshot names of the disks' volumes the caller has (`removeLeftovers`' listing,
    /// moments ago under the backup lock), used instead of listing them again.
    static func prepare(disks: [DiskPlan], store: RepositoryStore, snapshot: SnapshotName, full: Bool = false, fullEvery: Int = 0,
                        repositories: [String] = [], listed: [VolumeID: [String]] = [:], log: TaskLog) -> IncrementalForever {
        var previous: [String: IncrementalBase] = [:]
        var previousRuns: [String: Int] = [:]
        var remaining: [VolumeID: [String]] = [:]
        for d in disks {
            let plugin = d.plugin, volume = d.volume, file = d.deviceName + ".img"
            // Listed once: on zfs every listing is a `zfs list` round trip; nothing else changes them under the backup lock.
            let bases = Result { try listed[volume].map { $0.filter(BaseSnapshot.isBase).sorted() } ?? BaseSnapshot.list(volume, on: plugin) }
            var found = IncrementalBase.find(repository: store.repository, type: snapshot.type, id: snapshot.id,
                                             file: file, volume: volume.description,
                                             baseExists: { try bases.get().contains($0) })
            let keep: String? = if case .incremental(_, _, let base) = found { base } else { nil }
            if case .incremental(let prev, _, _) = found {
                // Counted in the manifests, so pruned backups in between do not reset it; older manifests have no count (0).
                let record = (try? store.repository.manifest(prev))?.unprotected.baseSnapshots?.first { $0.filename == file + ".fidx" }
                let runs = record?.incrementalRuns ?? 0
                previousRuns[d.key] = runs
                if full {
                    found = .full(reason: "--full given")
                } else if fullEvery > 0 && runs + 1 >= fullEvery {
                    found = .full(reason: "full-every \(fullEvery) reached")
                }
            } else if case .full(let reason) = found, let why = unrecordedBases(try? bases.get(), of: volume, after: snapshot, store: store) {
                found = .full(reason: reason + "; " + why)
            }
            previous[d.key] = found
            do {
                var names = try bases.get()
                let dropped = try BaseSnapshot.drop([volume], on: plugin, keep: keep, repository: store.storage, listed: [volume: names])
                for name in dropped {
                    log.info("removed base snapshot '\(name)' of '\(volume)' that no finished backup recorded")
                }
                names.removeAll { dropped.contains($0) }
                // A repository storage no longer configured: no backup would ever read or drop its bases.
                let orphans = repositories.isEmpty ? [] : names.filter { name in !repositories.contains { BaseSnapshot.belongs(name, to: $0) } }
                for name in orphans {
                    try plugin.deleteSnapshot([volume], name: name)
                    names.removeAll { $0 == name }
                    log.info("removed base snapshot '\(name)' of '\(volume)' of a repository storage no longer configured")
                }
                remaining[volume] = names
            } catch {
                // Not fatal: the next run tries again; this one only takes its own new base.
                log.warn("cannot remove unrecorded base snapshots of '\(volume)': \(error)")
            }
        }
        return IncrementalForever(newBase: BaseSnapshot.name(backupTime: snapshot.time, repository: store.storage), repository: store.storage,
                                  previous: previous, previousRuns: previousRuns, remaining: remaining)
    }

    /// When a disk must be read whole: bases on its storage newer than every
    /// backup of the guest left in the repository (the backup that recorded
    /// one was removed from the repository, or a run was killed), said in the reason.
    private static func unrecordedBases(_ bases: [String]?, of volume: VolumeID, after snapshot: SnapshotName,
                                        store: RepositoryStore) -> String? {
        guard let bases, !bases.isEmpty else { return nil }
        let newest = (try? store.repository.snapshots(type: snapshot.type, id: snapshot.id).last).flatMap { $0 }
        let floor = newest.map { BaseSnapshot.timeText(of: BaseSnapshot.name(backupTime: $0.time)) } ?? ""
        let newer = bases.filter { BaseSnapshot.belongs($0, to: store.storage) && BaseSnapshot.timeText(of: $0) > floor }
        guard !newer.isEmpty else { return nil }
        return "base snapshot \(newer.map { "'\($0)'" }.joined(separator: ", ")) of \(volume) belongs to no backup left in the repository"
            + " (the backup was removed, or its run was killed)"
    }

    /// What to read of one disk: the previous index and the changed chunks, or why everything.
    enum Read {
        case incremental(previous: FixedIndex, changed: ChangedChunks)
        case full(reason: String)

        var changed: ChangedChunks? {
            if case .incremental(_, let c) = self { return c }
            return nil
        }
    }

    /// Asks the storages what changed now, right after the new snapshot and before it is
    /// opened: a report may carry the changed data, so the reader need not open the snapshot
    /// (zfs-fuse: no read clone; `StoragePlugin.openBlockSource(_:snapshot:changes:)`).
    mutating func resolve(_ disks: [DiskPlan]) {
        for d in disks where tracked[d.key] == nil { tracked[d.key] = read(d) }
    }

    /// Asks the storage what changed between the recorded base and the new snapshot.
    func read(_ d: DiskPlan) -> Read {
        if let t = tracked[d.key] { return t }
        switch previous[d.key] ?? .full(reason: "no decision for \(d.deviceName)") {
        case .full(let reason):
            return .full(reason: reason)
        case .incremental(_, let index, let base):
            do {
                switch try d.plugin.changedChunks(d.volume, base: base, snapshot: newBase, chunkSize: FixedIndex.defaultChunkSize) {
                case .changed(let c): return .incremental(previous: index, changed: c)
                case .unknown(let reason): return .full(reason: reason)
                }
            } catch {
                return .full(reason: "cannot compare '\(base)' and '\(newBase)' of '\(d.volume)': \(error)")
            }
        }
    }

    /// After the new manifest exists: every base of the disks but the new one goes.
    func dropOldBases(_ disks: [DiskPlan], log: TaskLog) {
        for d in disks {
            do {
                // Under the backup lock nothing else adds or drops this repository's bases of the disk:
                // the ones `prepare` left (the new base is kept by name). One removed by hand meanwhile: listed after all.
                let listed = remaining[d.volume].map { [d.volume: $0] } ?? [:]
                let dropped: [String]
                do {
                    dropped = try BaseSnapshot.drop([d.volume], on: d.plugin, keep: newBase, repository: repository, listed: listed)
                } catch let e as StorageError where e.code == .notFound && !listed.isEmpty {
                    dropped = try BaseSnapshot.drop([d.volume], on: d.plugin, keep: newBase, repository: repository)
                }
                for name in dropped {
                    log.info("removed old base snapshot '\(name)' of '\(d.volume)'")
                }
            } catch {
                log.warn("cannot remove old base snapshots of '\(d.volume)' (the next backup tries again): \(error)")
            }
        }
    }
}

/// `vm unlock` after a killed backup: base snapshots of the guest's disks
/// that the newest backup of the guest in no repository records are a
/// killed run's new snapshot (or a base a chain left behind) and go; the
/// recorded ones stay. The same for its dirty bitmap bases (`BitmapBases`).
/// Every repository storage is read (manifests as
/// stored, unverified: only to know what to keep); one that cannot be read
/// means nothing is removed, since its backup may need its base.
public enum UnrecordedBases {
    public static func remove(vmid: Int, config: VMConfig, storages: StorageRegistry, paths: SnapdumpPaths) async throws -> [String] {
        var recorded = Set<String>()   // "<volume>@<snapshot>"
        for def in storages.config.storages where def.type == .repo {
            guard let path = def.path else { continue }
            let repo = try Repository(root: path)
            guard let last = try repo.snapshots(type: "vm", id: "\(vmid)").last else { continue }
            let file = repo.directory(of: last) + "/" + Manifest.fileName
            let manifest = try Manifest(blob: try FileSystem.readBytes(file), object: "snapshot \(last) manifest in '\(def.id)'")
            for b in manifest.unprotected.baseSnapshots ?? [] { recorded.insert("\(b.volume)@\(b.snapshot)") }
        }
        var removed: [String] = []
        for d in try DiskPlan.resolve(config, storages: storages) where IncrementalForever.tracks(d) {
            for name in try BaseSnapshot.list(d.volume, on: d.plugin) where !recorded.contains("\(d.volume)@\(name)") {
                try d.plugin.deleteSnapshot([d.volume], name: name)
                removed.append("base snapshot '\(name)' of '\(d.volume)'")
            }
        }
        return removed + (try await BitmapBases.removeUnrecorded(vmid: vmid, config: config, recorded: recorded, storages: storages, paths: paths))
    }
}

extension UnrecordedBases {
    /// After backups were removed from a repository (`prune`, `backup
    /// remove`): a guest whose newest backup there went has a base that no
    /// backup records any more; it goes now rather than at the guest's next
    /// backup. Only while no backup runs (the global backup lock, not waited
    /// for: a running backup's new snapshot is recorded by nothing yet) and
    /// only for guests that still exist and are not locked. Returns what was
    /// removed and, per guest, why its bases were left alone.
    public static func removeAfterRemoval(vmids: Set<Int>, paths: SnapdumpPaths, storages: StorageRegistry) async
        -> (removed: [String], skipped: [String]) {
        let existing = vmids.sorted().filter { VMConfig.exists(vmid: $0, paths: paths) }
        guard !existing.isEmpty else { return ([], []) }
        let lock: FileLock
        do { lock = try FileLock.acquire(paths.backupLock, timeout: 0) } catch {
            return ([], ["a backup is running: base snapshots are left to the next backup of the guest"])
        }
        defer { lock.unlock() }
        var removed: [String] = [], skipped: [String] = []
        for vmid in existing {
            do {
                let config = try VMConfig.load(vmid: vmid, paths: paths)
                if let l = config.lock { skipped.append("VM \(vmid) is locked (\(l)): its base snapshots are left alone"); continue }
                removed += try await remove(vmid: vmid, config: config, storages: storages, paths: paths)
            } catch {
                skipped.append("base snapshots of VM \(vmid) left alone: \(error)")
            }
        }
        return (removed, skipped)
    }
}
