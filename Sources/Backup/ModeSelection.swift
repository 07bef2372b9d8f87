import Storage

/// How snapshot mode will freeze each disk, decided before the guest is touched.
enum SnapshotPlan {
    /// Storage snapshots, grouped per storage. `needsPause`: the guest must be
    /// paused so that all snapshots share one point in time (several storages,
    /// or a storage that snapshots one volume at a time).
    /// `overlay`: running qcow2 disks on `dir` storages, frozen by QEMU overlays in one QMP transaction.
    case storage(groups: [(plugin: any StoragePlugin, volumes: [VolumeID])], overlay: [DiskPlan], needsPause: Bool)
    /// Some disk cannot be snapshotted; the message names each such disk.
    case unsupported(String)

    static func make(for disks: [DiskPlan], running: Bool) -> SnapshotPlan {
        var problems: [String] = []
        var groups: [(plugin: any StoragePlugin, volumes: [VolumeID])] = []
        var overlay: [DiskPlan] = []
        var needsPause = false
        for d in disks {
            if running && d.format == .qcow2 && d.plugin.definition.type == .dir {
                overlay.append(d)
                continue
            }
            switch d.plugin.snapshotCapability(for: d.format) {
            case .unsupported(let reason):
                problems.append("\(d.key) on \(d.volume.storage): \(reason)")
            case .perVolume:
                needsPause = true
                fallthrough
            case .atomic:
                if let i = groups.firstIndex(where: { $0.plugin.id == d.plugin.id }) {
                    groups[i].volumes.append(d.volume)
                } else {
                    groups.append((d.plugin, [d.volume]))
                }
            }
        }
        if !problems.isEmpty {
            return .unsupported("mode failure - some volumes do not support snapshots (\(problems.joined(separator: "; ")))")
        }
        if groups.count + (overlay.isEmpty ? 0 : 1) > 1 { needsPause = true }
        return .storage(groups: groups, overlay: overlay, needsPause: needsPause)
    }
}
