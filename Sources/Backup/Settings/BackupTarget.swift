import Storage

/// Where a backup run writes its archives: a storage with content `backup`
/// (its `<path>/dump`), or a directory (`dumpdir`). Decided once, from the
/// command line or job, then vzdump.conf, then `local`.
public enum BackupTarget: Sendable, Equatable, CustomStringConvertible {
    case storage(String)
    case dumpdir(String)

    /// vzdump's default target.
    public static let local = BackupTarget.storage("local")

    public var storageID: String? {
        if case .storage(let id) = self { return id }
        return nil
    }

    public var dumpdir: String? {
        if case .dumpdir(let d) = self { return d }
        return nil
    }

    /// The directory archives go to: the dump directory itself, or
    /// `<path>/dump` of the storage, which must have content `backup`.
    public func directory(storages: StorageRegistry) throws -> String {
        switch self {
        case .dumpdir(let d):
            return d
        case .storage(let id):
            let def = try storages.config.storage(id)
            guard def.content.contains(.backup) else {
                throw BackupError("storage '\(id)' does not support backups (content 'backup' is not enabled)")
            }
            // Never VMA files inside a repository's directory.
            if def.type == .repo {
                throw BackupError("storage '\(id)' is a backup repository: backing up into it is not supported yet (fill it with 'snapdump repo import')")
            }
            guard let path = def.path else { throw BackupError("storage '\(id)' (\(def.type.rawValue)) has no path for backups") }
            return path + "/dump"
        }
    }

    /// As a command-line option: `--storage local`, `--dumpdir /srv/dump`.
    public var description: String {
        switch self {
        case .storage(let id): return "--storage \(id)"
        case .dumpdir(let d): return "--dumpdir \(d)"
        }
    }
}
