import Foundation
import SnapdumpSystem

/// `repo`: a deduplicating backup repository in a directory (the Repository
/// module owns its layout). Like Proxmox's `pbs` storage it holds backups
/// only: every image operation is refused with a message naming the storage.
public struct RepositoryStoragePlugin: StoragePlugin {
    public let definition: StorageDefinition

    public init(_ definition: StorageDefinition) { self.definition = definition }

    var root: String { definition.path ?? "/nonexistent" }

    private var noImages: StorageError {
        StorageError(.invalidArgument, "storage '\(id)' is a backup repository: it holds backups, not disk images")
    }

    /// The repository must exist (`snapdump repo init`) or its directory be creatable.
    public func activate() throws {
        let parent = (root as NSString).deletingLastPathComponent
        guard FileSystem.isDirectory(root) || FileSystem.isDirectory(parent) else {
            throw StorageError(.backend, "storage '\(id)': neither \(root) nor its parent directory exists")
        }
    }

    public func status() throws -> StorageStatus {
        let active = FileSystem.isDirectory(root + "/.chunks")
        let u = active ? try FileSystem.usage(root) : (0, 0, 0)
        return StorageStatus(id: id, type: .repo, active: active, total: u.0, used: u.1, available: u.2, snapshots: "n/a (backups only)")
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID { throw noImages }
    public func free(_ volume: VolumeID) throws { throw noImages }
    public func list(vmid: Int?) throws -> [VolumeInfo] { [] }
    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) { throw noImages }
    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability { .unsupported(reason: "a backup repository holds no images") }
    public func createSnapshot(_ volumes: [VolumeID], name: String) throws { throw noImages }
    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws { throw noImages }
    public func listSnapshots() throws -> [SnapshotInfo] { [] }
    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource { throw noImages }
}
