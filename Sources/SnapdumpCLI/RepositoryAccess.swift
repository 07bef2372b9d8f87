import ArgumentParser
import Storage
import Repository

/// Opens the repository of storage `storeid` (type `repo`) with its key, if any.
enum RepositoryAccess {
    static func definition(_ storeid: String, _ global: GlobalOptions) throws -> StorageDefinition {
        let def = try global.storages().config.storage(storeid)
        guard def.type == .repo, let path = def.path else {
            throw StorageError(.invalidArgument, "storage '\(storeid)' is a \(def.type.rawValue) storage, not a repository")
        }
        _ = path
        return def
    }

    static func crypt(_ def: StorageDefinition) throws -> CryptConfig? {
        try def.encryptionKey.map { try KeyFile.crypt(from: $0) }
    }

    static func open(_ storeid: String, _ global: GlobalOptions) throws -> Repository {
        let def = try definition(storeid, global)
        return try Repository(root: def.path!, crypt: try crypt(def))
    }
}

/// Sizes as `proxmox-backup-client` prints them: 1.5 GiB.
func humanBytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[i])
}
