import SnapdumpConfig

/// vzdump's `fleecing` option, Proxmox property string
/// `[[enabled=]<1|0>][,storage=<id>]`, parsed once (`VzdumpOption.table`).
/// Enabled, snapshot mode of a running guest whose disks cannot be
/// snapshotted by their storage uses QEMU backup fleecing (`FleecingBackup`)
/// instead of the suspend fallback; the fleecing images go to `storage`.
public struct FleecingSettings: Sendable, Equatable, CustomStringConvertible {
    public var enabled: Bool
    /// The storage the fleecing images go to.
    public var storage: String?

    public init(enabled: Bool = false, storage: String? = nil) {
        self.enabled = enabled
        self.storage = storage
    }

    /// Parses the property string; the message names the item at fault.
    public init(parsing text: String) throws(VzdumpOption.Invalid) {
        let ps: PropertyString
        do { ps = try PropertyString.parse(text, defaultKey: "enabled", what: "fleecing") } catch {
            throw VzdumpOption.Invalid("invalid value '\(text)' for fleecing: \((error as? ConfigError)?.message ?? "\(error)")")
        }
        self.init()
        for (k, v) in ps.items {
            switch k {
            case "enabled":
                guard let b = ConfigValue.bool(v) else {
                    throw VzdumpOption.Invalid("invalid value '\(v)' for fleecing enabled: expected 0 or 1")
                }
                enabled = b
            case "storage":
                guard SectionConfig.isValidID(v) else { throw VzdumpOption.Invalid("invalid storage id '\(v)' in fleecing") }
                storage = v
            default:
                throw VzdumpOption.Invalid("unknown key '\(k)' in fleecing (known: enabled, storage)")
            }
        }
    }

    /// As Proxmox writes it: `enabled=1,storage=local`.
    public var description: String {
        "enabled=\(enabled ? 1 : 0)" + (storage.map { ",storage=\($0)" } ?? "")
    }
}
