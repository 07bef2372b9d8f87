import SnapdumpConfig

/// vzdump's `fleecing` option (`enabled=1,storage=<id>`), typed. With fleecing
/// enabled, snapshot mode of a running guest whose disks cannot be snapshotted
/// by their storage uses QEMU backup fleecing (`FleecingBackup`) instead of the
/// suspend fallback; the fleecing images go to `storage`.
public struct FleecingSettings: Sendable, Equatable {
    public var enabled = false
    /// Storage for the fleecing images (content `images`); a backup that needs
    /// fleecing fails before touching the guest when it is missing.
    public var storage: String?

    public init(enabled: Bool = false, storage: String? = nil) {
        self.enabled = enabled
        self.storage = storage
    }

    public static let disabled = FleecingSettings()

    /// The one parser of the property string (`1`, `enabled=1,storage=local`);
    /// errors name the value and the key at fault.
    public static func parse(_ value: String) throws -> FleecingSettings {
        let ps: PropertyString
        do { ps = try PropertyString.parse(value, defaultKey: "enabled", what: "fleecing") } catch {
            throw BackupError("invalid value '\(value)' for fleecing: \(error)")
        }
        var s = FleecingSettings()
        for (k, v) in ps.items {
            switch k {
            case "enabled":
                guard let b = PrunePolicy.parseBool(v) else { throw BackupError("invalid value '\(v)' for fleecing enabled: expected 0 or 1") }
                s.enabled = b
            case "storage":
                guard SectionConfig.isValidID(v) else { throw BackupError("invalid storage id '\(v)' in fleecing") }
                s.storage = v
            default:
                throw BackupError("unknown key '\(k)' in fleecing (known: enabled, storage)")
            }
        }
        return s
    }
}
