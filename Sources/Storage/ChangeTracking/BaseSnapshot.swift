import Foundation
import SnapdumpSystem

/// The storage snapshot a repository backup read, kept after the backup as
/// the base the next backup's change tracking starts from: one per disk and
/// repository, named `snapdump_base_<UTC time of the backup>_<repository
/// storage id>` (`snapdump_base_20261130T020000Z_repo1`), so `snapshot list`
/// shows it and the repository backup it belongs to is plain from the name.
/// The next backup into the same repository takes its own snapshot under its
/// own base name, reads it, and drops that repository's old base once its
/// manifest is written; a guest backed up into two repositories alternately
/// keeps one base for each, and each backup reads only what changed since
/// the previous one into the same repository.
///
/// Not `snapdump-…`: the engine removes `snapdump-` snapshots left by killed
/// runs before every backup, and a base must survive until the next one.
public enum BaseSnapshot {
    public static let prefix = "snapdump_base_"
    /// `yyyyMMddTHHmmssZ`.
    static let timeLength = 16

    /// The base name for a backup made at `backupTime` (Unix seconds) into
    /// repository storage `repository` (nil: the name bases had before they
    /// carried the repository, which every repository treats as its own).
    /// A storage id too long for a snapshot name (64 characters) is replaced by a hash of it.
    public static func name(backupTime: Int64, repository: String? = nil) -> String {
        let base = prefix + CivilTime(backupTime, .utc).basicUTC
        guard let repository else { return base }
        return base + "_" + tag(repository)
    }

    /// The backup time in base name `snapshot` (the Unix epoch if it has none).
    public static func created(_ snapshot: String) -> Date {
        CivilTime(basicUTC: timeText(of: snapshot))?.date ?? Date(timeIntervalSince1970: 0)
    }

    /// The part of a base name after its time: `_<repository tag>`, or empty for a base
    /// named before names carried the repository.
    public static func repositoryPart(of snapshot: String) -> Substring {
        snapshot.dropFirst(prefix.count + timeLength)
    }

    /// The repository part of a base name for storage id `repository`.
    static func tag(_ repository: String) -> String {
        guard prefix.count + timeLength + 1 + repository.count > 64 else { return repository }
        // FNV-1a: stable across runs and builds (Hasher is seeded per process).
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in repository.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return "h" + String(h, radix: 16)
    }

    public static func isBase(_ snapshot: String) -> Bool { snapshot.hasPrefix(prefix) }

    /// Whether base `snapshot` belongs to repository storage `repository`: named
    /// for it, or named without a repository (a base from before names carried it).
    public static func belongs(_ snapshot: String, to repository: String) -> Bool {
        guard isBase(snapshot) else { return false }
        let rest = repositoryPart(of: snapshot)
        return rest.isEmpty || rest == "_" + tag(repository)
    }

    /// The time part of a base name (`20261130T020000Z`), which sorts as the backup times do.
    public static func timeText(of snapshot: String) -> String {
        String(snapshot.dropFirst(prefix.count).prefix(timeLength))
    }

    /// Names of the base snapshots of `volume` on its storage, oldest first.
    public static func list(_ volume: VolumeID, on plugin: any StoragePlugin) throws -> [String] {
        try plugin.snapshotNames(of: volume).filter(isBase).sorted()
    }

    /// Whether `volume` still has base snapshot `name` (for `IncrementalBase.find`).
    public static func exists(_ name: String, of volume: VolumeID, on plugin: any StoragePlugin) throws -> Bool {
        try list(volume, on: plugin).contains(name)
    }

    /// Removes every base snapshot of `volumes` except `keep` (the one the
    /// latest repository backup recorded); with `repository`, only the bases
    /// that belong to it (another repository's base is that one's to drop).
    /// Called after a backup's manifest is written, and to clean up a base a
    /// killed run left; returns the names removed. `listed`: the bases of a
    /// volume as the caller already listed them (`list`), not asked again.
    @discardableResult
    public static func drop(_ volumes: [VolumeID], on plugin: any StoragePlugin, keep: String?, repository: String? = nil,
                            listed: [VolumeID: [String]] = [:]) throws -> [String] {
        var byName: [String: [VolumeID]] = [:]
        for v in volumes {
            for name in try listed[v] ?? list(v, on: plugin) where name != keep && repository.map({ belongs(name, to: $0) }) ?? true {
                byName[name, default: []].append(v)
            }
        }
        for (name, vols) in byName.sorted(by: { $0.key < $1.key }) { try plugin.deleteSnapshot(vols, name: name) }
        return byName.keys.sorted()
    }

    /// Frees `volume` with its base snapshots (`volume free`, `vm destroy`):
    /// the bases go with the disk. Any other snapshot refuses the free before
    /// a base is touched, so a refused free leaves the next backup's base.
    public static func free(_ volume: VolumeID, on plugin: any StoragePlugin) throws {
        let others = try plugin.snapshotNames(of: volume).filter { !isBase($0) }
        guard others.isEmpty else {
            throw StorageError(.busy, "volume '\(volume)' has snapshots (\(others.joined(separator: ", "))): delete them first")
        }
        try drop([volume], on: plugin, keep: nil)
        try plugin.free(volume)
    }
}
