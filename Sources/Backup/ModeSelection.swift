import Guest
import Storage

/// How this backup gets a consistent view of the guest's disks: vzdump's mode
/// as decided for this guest, with what it needs to carry out.
enum BackupMethod {
    /// Read the volumes of a stopped guest; `shutdown`: it runs now, stop it first and start it again after.
    case stop(shutdown: Bool)
    /// Read the volumes while the guest is paused (`pause`: it runs now).
    case suspend(pause: Bool)
    /// A short freeze window makes point-in-time views of every disk (`SnapshotPlan`); the guest runs
    /// while the archive is read from them.
    case snapshot(SnapshotPlan)

    var mode: BackupMode {
        switch self {
        case .stop: return .stop
        case .suspend: return .suspend
        case .snapshot: return .snapshot
        }
    }
}

/// The mode decision, made before the guest is touched: the requested mode,
/// the guest's state and what each disk's storage can do decide the method.
struct ModeDecision {
    var method: BackupMethod
    /// Why snapshot mode became suspend mode, when it did (logged, and in the JSON summary).
    var fallbackReason: String?

    var mode: BackupMode { method.mode }

    /// `fleecing`: vzdump's `fleecing enabled=1` — snapshot mode fleeces disks
    /// whose storage cannot snapshot instead of falling back to suspend.
    static func make(requested: BackupMode, state: VMStatus.State, disks: [DiskPlan],
                     fallback: SnapshotFallback, fleecing: Bool = false) throws -> ModeDecision {
        // A stopped guest is consistent as it is: every mode reads its volumes (vzdump does the same).
        if state == .stopped { return ModeDecision(method: .stop(shutdown: false)) }
        switch requested {
        case .stop:
            return ModeDecision(method: .stop(shutdown: true))
        case .suspend:
            return ModeDecision(method: .suspend(pause: state == .running))
        case .snapshot:
            switch SnapshotPlan.make(for: disks, running: true, fleecing: fleecing) {
            case .success(let plan):
                return ModeDecision(method: .snapshot(plan))
            case .failure(let unsupported):
                switch fallback {
                case .refuse:
                    throw BackupError("\(unsupported.message); refusing (--snapshot-fallback refuse)")
                case .suspend:
                    return ModeDecision(method: .suspend(pause: state == .running), fallbackReason: unsupported.message)
                }
            }
        }
    }
}

/// How snapshot mode freezes each disk, decided before the guest is touched.
struct SnapshotPlan {
    /// How one disk gets its point-in-time view: chosen in `make`, with its
    /// step in `FreezeWindow` and its reader in `VMBackup.openSnapshotSources`.
    enum Technique: Equatable {
        /// The storage snapshots the volume (btrfs, zfs, reflink copy).
        case storageSnapshot
        /// A running qcow2 image on a `dir` storage: QEMU writes to an overlay while the image is read.
        case qemuOverlay
        /// QEMU backup fleecing (`FleecingBackup`): old data is copied to an image on the
        /// fleecing storage before the guest overwrites it, and read over QEMU's NBD export.
        case fleecing
    }

    struct Unsupported: Error {
        var message: String
    }

    var disks: [(disk: DiskPlan, technique: Technique)]
    /// The guest must be paused so that all views share one point in time
    /// (several storages or techniques, or several volumes of a storage that snapshots one volume at a time).
    var needsPause: Bool
    /// Why the disks are fleeced rather than snapshotted (which storages cannot snapshot); nil when they are not.
    var fleecingReason: String?

    /// Volumes to snapshot, grouped per storage (one call per storage).
    var storageGroups: [(plugin: any StoragePlugin, volumes: [VolumeID])] {
        var groups: [(plugin: any StoragePlugin, volumes: [VolumeID])] = []
        for (d, t) in disks where t == .storageSnapshot {
            if let i = groups.firstIndex(where: { $0.plugin.id == d.plugin.id }) {
                groups[i].volumes.append(d.volume)
            } else {
                groups.append((d.plugin, [d.volume]))
            }
        }
        return groups
    }

    var overlayDisks: [DiskPlan] { disks.filter { $0.technique == .qemuOverlay }.map(\.disk) }

    var fleecingDisks: [DiskPlan] { disks.filter { $0.technique == .fleecing }.map(\.disk) }

    /// `fleecing` (enabled, and the guest runs): when a disk's storage cannot snapshot,
    /// every disk is fleeced — one QMP transaction gives them one point in time, so
    /// the guest is never paused (mixing in storage snapshots would need a pause).
    static func make(for disks: [DiskPlan], running: Bool, fleecing: Bool = false) -> Result<SnapshotPlan, Unsupported> {
        var problems: [String] = []
        var planned: [(disk: DiskPlan, technique: Technique)] = []
        // Storages that snapshot one volume at a time, with how many of this guest's volumes each holds.
        var perVolumeCounts: [String: Int] = [:]
        for d in disks {
            if running && d.format == .qcow2 && d.plugin.definition.type == .dir {
                planned.append((d, .qemuOverlay))
                continue
            }
            switch d.plugin.snapshotCapability(for: d.format) {
            case .unsupported(let reason):
                problems.append("\(d.key) on \(d.volume.storage): \(reason)")
            case .perVolume:
                perVolumeCounts[d.plugin.id, default: 0] += 1
                planned.append((d, .storageSnapshot))
            case .atomic:
                planned.append((d, .storageSnapshot))
            }
        }
        if !problems.isEmpty && fleecing && running {
            return .success(SnapshotPlan(disks: disks.map { ($0, .fleecing) }, needsPause: false,
                                         fleecingReason: "some volumes do not support snapshots (\(problems.joined(separator: "; ")))"))
        }
        if !problems.isEmpty {
            return .failure(Unsupported(message: "mode failure - some volumes do not support snapshots (\(problems.joined(separator: "; ")))"))
        }
        // One volume's snapshot is atomic on every storage (an rbd snapshot is taken by the
        // image's lock owner, QEMU, between two of its writes; a thin snapshot suspends the LV;
        // FICLONE locks the file): only several volumes of one such storage need the pause.
        var plan = SnapshotPlan(disks: planned, needsPause: perVolumeCounts.values.contains { $0 > 1 })
        if plan.storageGroups.count + (plan.overlayDisks.isEmpty ? 0 : 1) > 1 { plan.needsPause = true }
        return .success(plan)
    }
}
