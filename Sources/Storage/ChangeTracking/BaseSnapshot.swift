import Foundation

/// The storage snapshot a repository backup read, kept after the backup as
/// the base the next backup's change tracking starts from: one per disk,
/// named `snapdump_base_<UTC time of the backup>` (`snapdump_base_20261130T020000Z`),
/// so `snapshot list` shows it and the repository backup it belongs to is
/// plain from the name. The next backup takes its own snapshot under its own
/// base name, reads it, and drops the old base once its manifest is written.
///
/// Not `snapdump-…`: the engine removes `snapdump-` snapshots left by killed
/// runs before every backup, and a base must survive until the next one.
public enum BaseSnapshot {
    public static let prefix = "snapdump_base_"

    /// The base name for a backup made at `backupTime` (Unix seconds).
    public static func name(backupTime: Int64) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return prefix + f.string(from: Date(timeIntervalSince1970: TimeInterval(backupTime)))
    }

    public static func isBase(_ snapshot: String) -> Bool { snapshot.hasPrefix(prefix) }

    /// Base snapshots of `volume` on its storage, oldest first.
    public static func list(_ volume: VolumeID, on plugin: any StoragePlugin) throws -> [SnapshotInfo] {
        try plugin.listSnapshots().filter { $0.volume == volume && isBase($0.name) }.sorted { $0.name < $1.name }
    }

    /// Whether `volume` still has base snapshot `name` (for `IncrementalBase.find`).
    public static func exists(_ name: String, of volume: VolumeID, on plugin: any StoragePlugin) throws -> Bool {
        try list(volume, on: plugin).contains { $0.name == name }
    }

    /// Removes every base snapshot of `volumes` except `keep` (the one the
    /// latest repository backup recorded). Called after a backup's manifest
    /// is written, and to clean up a base a killed run left; returns the names removed.
    @discardableResult
    public static func drop(_ volumes: [VolumeID], on plugin: any StoragePlugin, keep: String?) throws -> [String] {
        var byName: [String: [VolumeID]] = [:]
        for v in volumes {
            for s in try list(v, on: plugin) where s.name != keep { byName[s.name, default: []].append(v) }
        }
        for (name, vols) in byName.sorted(by: { $0.key < $1.key }) { try plugin.deleteSnapshot(vols, name: name) }
        return byName.keys.sorted()
    }
}
