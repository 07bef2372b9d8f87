import Foundation
import SnapdumpSystem

/// `btrfs`: each VM's images live in one subvolume `<path>/images/<vmid>`, so
/// one read-only subvolume snapshot (`images/<vmid>@<name>`) freezes all of the
/// VM's disks at the same instant.
public struct BtrfsPlugin: StoragePlugin {
    public let definition: StorageDefinition
    let layout: ImageDirectory

    public init(_ definition: StorageDefinition) {
        self.definition = definition
        layout = ImageDirectory(storage: definition.id, root: definition.path ?? "/nonexistent")
    }

    var root: String { layout.root }
    func snapshotDir(vmid: Int, name: String) -> String { "\(layout.vmDir(vmid))@\(name)" }

    public func activate() throws {
        guard FileSystem.isDirectory(root) else {
            throw StorageError(.backend, "storage '\(id)': path \(root) does not exist or is not a directory")
        }
        let fs = FileSystem.filesystemType(root)
        guard fs == "btrfs" else {
            throw StorageError(.invalidArgument, "storage '\(id)': path \(root) is on \(fs ?? "an unknown filesystem"), not btrfs")
        }
    }

    public func status() throws -> StorageStatus {
        let active = (try? activate()) != nil
        let u = active ? try FileSystem.usage(root) : (0, 0, 0)
        return StorageStatus(id: id, type: .btrfs, active: active, total: u.0, used: u.1, available: u.2,
                             snapshots: "yes (subvolume per VM, atomic)")
    }

    public func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID {
        try NameRules.validateVMID(vmid)
        try activate()
        let size = try roundedSize(size)
        let format = format ?? definition.format ?? .raw
        try FileSystem.createDirectory(layout.imagesDir)
        if !FileSystem.isDirectory(layout.vmDir(vmid)) {
            try Command.run(["btrfs", "-q", "subvolume", "create", layout.vmDir(vmid)])
        }
        let vol = layout.volumeID(vmid: vmid, index: try layout.nextFreeIndex(vmid: vmid), format: format)
        try ImageDirectory.createImage(path: "\(layout.vmDir(vmid))/\(vol.diskName).\(format.rawValue)", size: size, format: format)
        return vol
    }

    public func free(_ volume: VolumeID) throws {
        try checkOwnership(volume)
        let (path, _) = try layout.filePath(volume)
        let p = try layout.parse(volume)
        let snaps = try snapshotNames(vmid: p.vmid)
        guard snaps.isEmpty else {
            throw StorageError(.busy, "volume '\(volume)' has snapshots (\(snaps.joined(separator: ", "))): delete them first")
        }
        try FileSystem.remove(path)
        if (try? FileSystem.list(layout.vmDir(p.vmid)))?.isEmpty == true {
            try FileSystem.deleteBtrfsSubvolume(layout.vmDir(p.vmid))
        }
    }

    public func list(vmid: Int?) throws -> [VolumeInfo] { try layout.list(vmid: vmid) }

    public func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat) {
        try checkOwnership(volume)
        return try layout.filePath(volume)
    }

    public func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability { .atomic }

    /// Snapshots every VM subvolume that holds one of `volumes`, one subvolume per VM.
    public func createSnapshot(_ volumes: [VolumeID], name: String) throws {
        try takeSnapshot(vmids: try checkedSnapshot(volumes, name: name), name: name)
    }

    /// The checks and a syncfs of the storage before the window; inside it one ioctl.
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        let vmids = try checkedSnapshot(volumes, name: name)
        let warnings = PreparedSnapshot.flushHostCaches([root])
        return PreparedSnapshot(warnings: warnings) { try takeSnapshot(vmids: vmids, name: name) }
    }

    /// The VM whose subvolume a snapshot `name` of `volumes` is taken of; throws what would make it fail.
    private func checkedSnapshot(_ volumes: [VolumeID], name: String) throws -> [Int] {
        try NameRules.validateSnapshotName(name)
        try activate()
        var vmids: [Int] = []
        for v in volumes {
            try checkOwnership(v)
            _ = try layout.filePath(v)
            let vmid = try layout.parse(v).vmid
            if !vmids.contains(vmid) { vmids.append(vmid) }
        }
        // One subvolume per VM: snapshots of two VMs would be two operations, not one atomic one.
        guard vmids.count <= 1 else {
            throw StorageError(.invalidArgument, "storage '\(id)': btrfs snapshots are atomic per VM (one subvolume each); volumes of VMs \(vmids.map(String.init).joined(separator: ", ")) cannot be snapshotted together, snapshot each VM separately")
        }
        for vmid in vmids where FileSystem.exists(snapshotDir(vmid: vmid, name: name)) {
            throw StorageError(.alreadyExists, "snapshot '\(name)' of VM \(vmid) on storage '\(id)' already exists")
        }
        return vmids
    }

    private func takeSnapshot(vmids: [Int], name: String) throws {
        var made: [String] = []
        do {
            for vmid in vmids {
                let dest = snapshotDir(vmid: vmid, name: name)
                // The ioctl, not `btrfs subvolume snapshot`: this runs inside the guest's freeze window.
                try FileSystem.createBtrfsSnapshot(of: layout.vmDir(vmid), at: dest)
                made.append(dest)
            }
        } catch {
            for d in made { try? FileSystem.deleteBtrfsSubvolume(d) }
            throw error
        }
    }

    public func deleteSnapshot(_ volumes: [VolumeID], name: String) throws {
        try NameRules.validateSnapshotName(name)
        var vmids: [Int] = []
        for v in volumes {
            try checkOwnership(v)
            let vmid = try layout.parse(v).vmid
            if !vmids.contains(vmid) { vmids.append(vmid) }
        }
        for vmid in vmids {
            let dir = snapshotDir(vmid: vmid, name: name)
            guard FileSystem.isDirectory(dir) else {
                throw StorageError(.notFound, "snapshot '\(name)' of VM \(vmid) on storage '\(id)' does not exist")
            }
            // The ioctl, not `btrfs subvolume delete`: the same call without a process (~3 ms each).
            try FileSystem.deleteBtrfsSubvolume(dir)
        }
    }

    func snapshotNames(vmid: Int) throws -> [String] {
        guard FileSystem.isDirectory(layout.imagesDir) else { return [] }
        let prefix = "\(vmid)@"
        return try FileSystem.list(layout.imagesDir).filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// The `<vmid>@<name>` subvolumes that hold the volume's file: a directory
    /// listing, not `listSnapshots` (a `btrfs subvolume show` per snapshot).
    public func snapshotNames(of volume: VolumeID) throws -> [String] {
        let p = try layout.parse(volume)
        return try snapshotNames(vmid: p.vmid).filter { FileSystem.exists("\(snapshotDir(vmid: p.vmid, name: $0))/\(p.file)") }
    }

    public func snapshotNames(of volumes: [VolumeID]) throws -> [VolumeID: [String]] {
        var names: [VolumeID: [String]] = [:]
        for v in Set(volumes) { names[v] = try snapshotNames(of: v) }
        return names
    }

    public func listSnapshots() throws -> [SnapshotInfo] {
        guard FileSystem.isDirectory(layout.imagesDir) else { return [] }
        var result: [SnapshotInfo] = []
        for entry in try FileSystem.list(layout.imagesDir) {
            guard let at = entry.firstIndex(of: "@"), let vmid = Int(entry[..<at]) else { continue }
            let name = String(entry[entry.index(after: at)...])
            let dir = "\(layout.imagesDir)/\(entry)"
            let created = Self.creationTime(dir)
            for file in try FileSystem.list(dir) {
                let vol = VolumeID(storage: id, volname: "\(vmid)/\(file)")
                guard (try? layout.parse(vol)) != nil else { continue }
                let sharing = try? File.openForReading("\(dir)/\(file)").extentSharing()
                result.append(SnapshotInfo(volume: vol, name: name, created: created, used: sharing.map { $0.bytes - $0.shared }))
            }
        }
        return result
    }

    /// A subvolume's creation time from `btrfs subvolume show`.
    static func creationTime(_ subvolume: String) -> Date {
        if let out = try? Command.run(["btrfs", "subvolume", "show", subvolume]) {
            for line in out.split(separator: "\n") {
                let t = line.trimmingCharacters(in: .whitespaces)
                guard t.hasPrefix("Creation time:") else { continue }
                let value = t.dropFirst("Creation time:".count).trimmingCharacters(in: .whitespaces)
                if let c = CivilTime(spaced: value, offset: true) { return c.date }
            }
        }
        let attrs = try? FileManager.default.attributesOfItem(atPath: subvolume)
        return attrs?[.modificationDate] as? Date ?? Date(timeIntervalSince1970: 0)
    }

    public func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource {
        try checkOwnership(volume)
        let (path, format) = try layout.filePath(volume)
        var file = path
        var label = volume.description
        if let snapshot {
            let p = try layout.parse(volume)
            file = "\(snapshotDir(vmid: p.vmid, name: snapshot))/\(p.file)"
            label += "@\(snapshot)"
            guard FileSystem.exists(file) else {
                throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
            }
        }
        switch format {
        case .raw: return try FileBlockSource(path: file, name: label, dropBehind: snapshot != nil)
        case .qcow2: return try NBDBlockSource(image: file, format: .qcow2, snapshot: nil, name: label)
        }
    }

    /// `btrfs send --no-data -p <base> <new>` (metadata only, no file data) —
    /// the send ioctl itself, into memory, not the `btrfs` tool and a temporary
    /// file — its stream read here (`BtrfsSendStream`): the ranges of the volume's
    /// file that send would transfer. Both snapshots are read-only subvolumes, as send needs.
    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        try checkOwnership(volume)
        let p = try layout.parse(volume)
        let newDir = snapshotDir(vmid: p.vmid, name: snapshot), baseDir = snapshotDir(vmid: p.vmid, name: base)
        guard FileSystem.exists("\(newDir)/\(p.file)") else {
            throw StorageError(.notFound, "snapshot '\(snapshot)' of volume '\(volume)' does not exist")
        }
        guard p.format == .raw else {
            return .unknown(reason: "volume '\(volume)' is \(p.format.rawValue): changes of the image file are not changes of the disk")
        }
        guard FileSystem.exists("\(baseDir)/\(p.file)") else {
            return .unknown(reason: "base snapshot '\(base)' of volume '\(volume)' does not exist (deleted by hand?)")
        }
        let baseSize = try File.openForReading("\(baseDir)/\(p.file)").size()
        let size = try File.openForReading("\(newDir)/\(p.file)").size()
        let stream: [UInt8]
        do {
            stream = try FileSystem.btrfsSendNoData(base: baseDir, snapshot: newDir)
        } catch {
            return .unknown(reason: "btrfs send from '\(base)' to '\(snapshot)' failed: \(error)")
        }
        var result = ChangedChunks(chunkSize: chunkSize, baseSize: baseSize, size: size, method: "btrfs send")
        return BtrfsSendStream.changes(stream: stream, path: p.file, into: &result)
    }
}
