import Foundation
import Guest
import Repository
import SnapdumpSystem
import Storage

/// Incremental forever for a stop- or snapshot-mode backup into a repository (issue 11;
/// the call sequence is in `Sources/Repository/README.md`). The storage
/// snapshot the backup reads is named `snapdump_base_<time>` and kept after
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
    /// Per disk key: what the previous backup offers (`.incremental`) or why this disk is read whole.
    let previous: [String: IncrementalBase]

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
    static func prepare(disks: [DiskPlan], store: RepositoryStore, snapshot: SnapshotName, log: TaskLog) -> IncrementalForever {
        var previous: [String: IncrementalBase] = [:]
        for d in disks {
            let plugin = d.plugin, volume = d.volume
            let found = IncrementalBase.find(repository: store.repository, type: snapshot.type, id: snapshot.id,
                                             file: d.deviceName + ".img", volume: volume.description,
                                             baseExists: { try BaseSnapshot.exists($0, of: volume, on: plugin) })
            previous[d.key] = found
            let keep: String? = if case .incremental(_, _, let base) = found { base } else { nil }
            do {
                for name in try BaseSnapshot.drop([volume], on: plugin, keep: keep) {
                    log.info("removed base snapshot '\(name)' of '\(volume)' that no finished backup recorded")
                }
            } catch {
                // Not fatal: the next run tries again; this one only takes its own new base.
                log.warn("cannot remove unrecorded base snapshots of '\(volume)': \(error)")
            }
        }
        return IncrementalForever(newBase: BaseSnapshot.name(backupTime: snapshot.time), previous: previous)
    }

    /// What to read of one disk: the previous index and the changed chunks, or why everything.
    enum Read {
        case incremental(previous: FixedIndex, changed: ChangedChunks)
        case full(reason: String)
    }

    /// Asks the storage what changed between the recorded base and the new snapshot.
    func read(_ d: DiskPlan) -> Read {
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
                for name in try BaseSnapshot.drop([d.volume], on: d.plugin, keep: newBase) {
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
/// recorded ones stay. Every repository storage is read (manifests as
/// stored, unverified: only to know what to keep); one that cannot be read
/// means nothing is removed, since its backup may need its base.
public enum UnrecordedBases {
    public static func remove(vmid: Int, config: VMConfig, storages: StorageRegistry) throws -> [String] {
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
            for s in try BaseSnapshot.list(d.volume, on: d.plugin) where !recorded.contains("\(d.volume)@\(s.name)") {
                try d.plugin.deleteSnapshot([d.volume], name: s.name)
                removed.append("base snapshot '\(s.name)' of '\(d.volume)'")
            }
        }
        return removed
    }
}
