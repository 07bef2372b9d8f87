import Storage

/// How snapshot mode will freeze each disk, decided before the guest is touched.
enum SnapshotPlan {
    /// Storage snapshots, grouped per storage. `needsPause`: the guest must be
    /// paused so that all snapshots share one point in time (several storages,
    /// or a storage that snapshots one volume at a time).
    case storage(groups: [(plugin: any StoragePlugin, volumes: [VolumeID])], needsPause: Bool)
    /// Some disk cannot be snapshotted; the message names each such disk.
    case unsupported(String)

    static func make(for disks: [DiskPlan]) -> SnapshotPlan {
        var problems: [String] = []
        var groups: [(plugin: any StoragePlugin, volumes: [VolumeID])] = []
        var needsPause = false
        for d in disks {
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
        if groups.count > 1 { needsPause = true }
        return .storage(groups: groups, needsPause: needsPause)
    }
}
