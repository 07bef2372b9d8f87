import SnapdumpConfig

/// The configured storages and their plugins.
public struct StorageRegistry: Sendable {
    public let config: StorageConfigFile

    public init(paths: SnapdumpPaths) throws {
        config = try StorageConfigFile.load(paths.storageConfig)
    }

    public init(config: StorageConfigFile) { self.config = config }

    public static func plugin(for def: StorageDefinition) -> any StoragePlugin {
        switch def.type {
        case .dir: return DirectoryPlugin(def)
        case .btrfs: return BtrfsPlugin(def)
        case .zfspool: return ZFSPoolPlugin(def)
        case .rbd: return RBDPlugin(def)
        case .lvm, .lvmthin: return LVMPlugin(def)
        case .repo: return RepositoryStoragePlugin(def)
        }
    }

    public func plugin(_ storeID: String) throws -> any StoragePlugin {
        let def = try config.storage(storeID)
        guard !def.disabled else { throw StorageError(.backend, "storage '\(storeID)' is disabled") }
        return Self.plugin(for: def)
    }

    public func plugin(for volume: VolumeID) throws -> any StoragePlugin { try plugin(volume.storage) }

    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        try plugin(for: volume).path(of: volume)
    }
}
