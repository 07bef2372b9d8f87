import Foundation
import SnapdumpSystem

/// `dir`: image files in `<path>/images/<vmid>/`.
///
/// Snapshots: raw files only with `reflink 1` (a FICLONE copy in
/// `images/<vmid>/.snapshots/<name>/`, per file, so the guest must be paused
/// around several disks); qcow2 files with `qemu-img snapshot` while the image
/// is not in use (a running guest's qcow2 disks are snapshotted through QEMU).
public struct DirectoryPlugin: StoragePlugin {
    public let definition: StorageDefinition
    let layout: ImageDirectory

    public init(_ definition: StorageDefinition) {
        self.definition = definition
        layout = ImageDirectory(storage: definition.id, root: definition.path ?? "/nonexistent")
    }

    var root: String { layout.root }

    public func activate() throws {
        if let m = definition.requiredMountPoint, !FileSystem.isMountPoint(m) {
            throw StorageError(.backend, "storage '\(id)': directory \(m) is expected to be a mount point but is not mounted")
        }
        if !FileSystem.isDirectory(root) && definition.createBasePath && !FileSystem.exists(root) {
            // As pvesm: the base path is made on activation (mode 0755 like mkpath; data below it stays 0700).
            try FileSystem.createDirectory(root, mode: 0o755)
        }
        guard FileSystem.isDirectory(root) else {
            throw StorageError(.backend, "storage '\(id)': path \(root) does not exist or is not a directory")
        }
        if definition.reflink { try Self.probeReflink(at: root, storage: id) }
    }

    /// Clones a small file on the filesystem under `dir`; throws when FICLONE does not work there.
    public static func probeReflink(at dir: String, storage: String) throws {
        let a = "\(dir)/.snapdump-reflink-probe-\(getpid())", b = a + ".clone"
        defer { try? FileSystem.remove(a); try? FileSystem.remove(b) }
        do {
            let src = try File.open(a, O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
            try [UInt8](repeating: 0x5a, count: 4096).withUnsafeBytes { try src.write($0, at: 0) }
            try src.sync()
            let dst = try File.open(b, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
            try dst.cloneContents(of: src)
        } catch let e as SystemError {
            let fs = FileSystem.filesystemType(dir) ?? "unknown"
            throw StorageError(.invalidArgument, "storage '\(storage)': reflink 1 needs a filesystem that can clone files (XFS with reflink=1 or btrfs), but \(dir) is on \(fs): \(e.reason)")
        }
    }

    public func status() throws -> StorageStatus {
        let active = FileSystem.isDirectory(root) && definition.requiredMountPoint.map(FileSystem.isMountPoint) != false
        let u = active ? try FileSystem.usage(root) : (0, 0, 0)
        let snaps = definition.reflink ? "raw (reflink), qcow2 (offline)" : "qcow2 (offline) only"
        return StorageStatus(id: id, type: .dir, active: active, total: u.0, used: u.1, available: u.2, snapshots: snaps)
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID {
        try NameRules.validateVMID(vmid)
        try activate()
        let size = try roundedSize(size)
        let format = format ?? definition.format ?? .raw
        try FileSystem.createDirectory(layout.vmDir(vmid))
        let vol = layout.volumeID(vmid: vmid, index: try layout.nextFreeIndex(vmid: vmid), format: format)
        let path = "\(layout.vmDir(vmid))/\(vol.diskName).\(format.rawValue)"
        try ImageDirectory.createImage(path: path, size: size, format: format)
        return vol
    }

    public func free(_ volume: VolumeID) throws {
        try checkOwnership(volume)
        let (path, format) = try layout.filePath(volume)
        let snaps = try snapshotNames(of: volume, format: format)
        guard snaps.isEmpty else {
            throw StorageError(.busy, "volume '\(volume)' has snapshots (\(snaps.joined(separator: ", "))): delete them first")
        }
        try FileSystem.remove(path)
    }

    public func list(vmid: Int?) throws -> [VolumeInfo] { try layout.list(vmid: vmid) }

    /// Beside the VM's disks, as Proxmox puts `vm-<vmid>-fleece-<n>` images on an images storage.
    public func fleecingDirectory(vmid: Int) throws -> String {
        try NameRules.validateVMID(vmid)
        guard definition.content.contains(.images) else {
            throw StorageError(.invalidArgument, "storage '\(id)' cannot hold fleecing images: it has no content 'images'")
        }
        try activate()
        try FileSystem.createDirectory(layout.vmDir(vmid))
        return layout.vmDir(vmid)
    }

    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        try checkOwnership(volume)
        return try layout.filePath(volume)
    }

    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability {
        switch format {
        case .qcow2: return .perVolume
        case .raw: return definition.reflink ? .perVolume : .unsupported(reason: "raw files on dir storage")
        }
    }

    func reflinkSnapshotDir(vmid: Int, name: String) -> String { "\(layout.vmDir(vmid))/.snapshots/\(name)" }

    public func createSnapshot(_ volumes: [VolumeID], name: String) throws {
        try snapshot(volumes, name: name, durable: true)
    }

    /// The volumes' filesystems flushed before the window; inside it a FICLONE per raw volume,
    /// not fsynced (an XFS log force): the clone lives only while the backup reads it.
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        let warnings = PreparedSnapshot.flushHostCaches(try volumes.map { try path(of: $0).path })
        return PreparedSnapshot(warnings: warnings) { try snapshot(volumes, name: name, durable: false) }
    }

    private func snapshot(_ volumes: [VolumeID], name: String, durable: Bool) throws {
        try NameRules.validateSnapshotName(name)
        var done: [VolumeID] = []
        do {
            for v in volumes {
                try checkOwnership(v)
                let (path, format) = try layout.filePath(v)
                if let e = snapshotUnsupported(format) { throw e }
                guard !(try snapshotNames(of: v, format: format)).contains(name) else {
                    throw StorageError(.alreadyExists, "snapshot '\(name)' of volume '\(v)' already exists")
                }
                switch format {
                case .qcow2:
                    try Command.run(["qemu-img", "snapshot", "-c", name, path])
                case .raw:
                    let p = try layout.parse(v)
                    let dir = reflinkSnapshotDir(vmid: p.vmid, name: name)
                    let target = "\(dir)/\(p.file)"
                    do {
                        try FileSystem.createDirectory(dir)
                        let src = try File.openForReading(path)
                        let dst = try File.createNew(target, mode: 0o400)
                        try dst.cloneContents(of: src)
                        if durable { try dst.sync() }
                    } catch {
                        // Leave no empty snapshot directories behind (rmdir fails on non-empty ones).
                        try? FileSystem.remove(target)
                        try? FileSystem.removeDirectory(dir)
                        try? FileSystem.removeDirectory("\(layout.vmDir(p.vmid))/.snapshots")
                        throw error
                    }
                }
                done.append(v)
            }
        } catch {
            // All or nothing: remove the snapshots this call made before the failure.
            try? deleteSnapshot(done, name: name)
            if let e = error as? SystemError, e.isNoSpace {
                throw StorageError(.noSpace, "snapshot '\(name)' of \(volumes.map(\.description).joined(separator: ", ")) on storage '\(id)' failed: no space left on device (\(e))")
            }
            throw error
        }
    }

    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws {
        try NameRules.validateSnapshotName(name)
        for v in volumes {
            try checkOwnership(v)
            let (path, format) = try layout.filePath(v)
            guard try snapshotNames(of: v, format: format).contains(name) else {
                throw StorageError(.notFound, "snapshot '\(name)' of volume '\(v)' does not exist")
            }
            switch format {
            case .qcow2:
                try Command.run(["qemu-img", "snapshot", "-d", name, path])
            case .raw:
                let p = try layout.parse(v)
                let dir = reflinkSnapshotDir(vmid: p.vmid, name: name)
                try FileSystem.remove("\(dir)/\(p.file)")
                if (try? FileSystem.list(dir))?.isEmpty == true { try FileSystem.removeDirectory(dir) }
                let parent = "\(layout.vmDir(p.vmid))/.snapshots"
                if (try? FileSystem.list(parent))?.isEmpty == true { try FileSystem.removeDirectory(parent) }
            }
        }
    }

    public func snapshotNames(of volume: VolumeID) throws -> [String] {
        try snapshotNames(of: volume, format: try layout.parse(volume).format)
    }

    public func snapshotNames(of volumes: [VolumeID]) throws -> [VolumeID: [String]] {
        var names: [VolumeID: [String]] = [:]
        for v in Set(volumes) { names[v] = try snapshotNames(of: v) }
        return names
    }

    /// Raw: the clone directories holding the volume's file, without the
    /// extent-map walk `snapshots(of:)` does to measure each.
    func snapshotNames(of volume: VolumeID, format: VolumeFormat) throws -> [String] {
        switch format {
        case .qcow2:
            return try snapshots(of: volume, format: format).map(\.name)
        case .raw:
            let p = try layout.parse(volume)
            let base = "\(layout.vmDir(p.vmid))/.snapshots"
            guard FileSystem.isDirectory(base) else { return [] }
            return try FileSystem.list(base).filter { FileSystem.exists("\(base)/\($0)/\(p.file)") }
        }
    }

    func snapshots(of volume: VolumeID, format: VolumeFormat) throws -> [SnapshotInfo] {
        let (path, _) = try layout.filePath(volume)
        switch format {
        case .qcow2:
            return try ImageDirectory.qcow2Snapshots(path: path).map {
                SnapshotInfo(volume: volume, name: $0.name, created: $0.created, used: nil)
            }
        case .raw:
            let p = try layout.parse(volume)
            let base = "\(layout.vmDir(p.vmid))/.snapshots"
            guard FileSystem.isDirectory(base) else { return [] }
            return try FileSystem.list(base).compactMap { name in
                let file = "\(base)/\(name)/\(p.file)"
                guard FileSystem.exists(file) else { return nil }
                let attrs = try? FileManager.default.attributesOfItem(atPath: file)
                let created = attrs?[.creationDate] as? Date ?? attrs?[.modificationDate] as? Date ?? Date(timeIntervalSince1970: 0)
                let sharing = try? File.openForReading(file).extentSharing()
                return SnapshotInfo(volume: volume, name: name, created: created, used: sharing.map { $0.bytes - $0.shared })
            }
        }
    }

    public func listSnapshots() throws -> [SnapshotInfo] {
        try list(vmid: nil).flatMap { try snapshots(of: $0.volume, format: $0.format) }
    }

    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource {
        try checkOwnership(volume)
        let (path, format) = try layout.filePath(volume)
        let label = snapshot.map { "\(volume)@\($0)" } ?? volume.description
        if let snapshot {
            guard try snapshotNames(of: volume, format: format).contains(snapshot) else {
                throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
            }
        }
        switch format {
        case .qcow2:
            return try NBDBlockSource(image: path, format: .qcow2, snapshot: snapshot, name: label)
        case .raw:
            if let snapshot {
                let p = try layout.parse(volume)
                return try FileBlockSource(path: "\(reflinkSnapshotDir(vmid: p.vmid, name: snapshot))/\(p.file)", name: label, dropBehind: true)
            }
            return try FileBlockSource(path: path, name: label)
        }
    }

    /// Raw files with `reflink 1`: the block maps (FIEMAP) of the base clone and
    /// the new clone compared (`ExtentComparison`). qcow2: not tracked here.
    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        try checkOwnership(volume)
        let p = try layout.parse(volume)
        let newFile = "\(reflinkSnapshotDir(vmid: p.vmid, name: snapshot))/\(p.file)"
        let baseFile = "\(reflinkSnapshotDir(vmid: p.vmid, name: base))/\(p.file)"
        guard p.format == .raw, definition.reflink else {
            return .unknown(reason: "storage '\(id)' tracks changes of raw files with reflink 1 only (volume '\(volume)' is \(p.format.rawValue))")
        }
        guard FileSystem.exists(newFile) else {
            throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
        }
        guard FileSystem.exists(baseFile) else {
            return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' does not exist (deleted by hand?)")
        }
        do {
            return .changed(try ExtentComparison.changes(basePath: baseFile, newPath: newFile, chunkSize: chunkSize))
        } catch let e as SystemError {
            return .unknown(reason: "cannot compare the block maps of '\(base)' and '\(snapshot)' of volume '\(volume)': \(e)")
        }
    }
}
