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
                throw BackupError("storage '\(id)' is a backup repository, not a dump directory (its backups are named '\(id):backup/vm/<vmid>/<time>')")
            }
            guard let path = def.path else { throw BackupError("storage '\(id)' (\(def.type.rawValue)) has no path for backups") }
            return path + "/dump"
        }
    }

    /// What the target is: a dump directory for VMA archives, or a
    /// deduplicating repository (a storage of type `repo`). The engine
    /// branches on this once per step, never on the storage type itself.
    public func destination(storages: StorageRegistry) throws -> BackupDestination {
        if case .storage(let id) = self {
            let def = try storages.config.storage(id)
            if def.type == .repo {
                guard def.content.contains(.backup) else {
                    throw BackupError("storage '\(id)' does not support backups (content 'backup' is not enabled)")
                }
                guard let path = def.path else { throw BackupError("storage '\(id)' (repo) has no path") }
                return .repository(storage: id, path: path, encryptionKey: def.encryptionKey)
            }
        }
        return .dumpDirectory(path: try directory(storages: storages), storage: storageID)
    }

    /// As a command-line option: `--storage local`, `--dumpdir /srv/dump`.
    public var description: String {
        switch self {
        case .storage(let id): return "--storage \(id)"
        case .dumpdir(let d): return "--dumpdir \(d)"
        }
    }
}

/// Where one backup run writes, resolved from a `BackupTarget`.
public enum BackupDestination: Sendable, Equatable {
    /// VMA archives, logs, notes and `.protected` files in a directory;
    /// `storage` is the storage id (nil for `--dumpdir`).
    case dumpDirectory(path: String, storage: String?)
    /// Snapshots `vm/<vmid>/<time>` in the repository at `path` (storage
    /// type `repo`), encrypted with the key file at `encryptionKey` if set.
    case repository(storage: String, path: String, encryptionKey: String?)

    /// The dump directory, for a VMA destination.
    public var dumpdir: String? {
        if case .dumpDirectory(let p, _) = self { return p }
        return nil
    }
}
