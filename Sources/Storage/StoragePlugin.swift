import Foundation
import SnapdumpSystem

/// Status of a storage (`pvesm status`).
public struct StorageStatus: Sendable {
    public var id: String
    public var type: StorageType
    public var active: Bool
    public var total: UInt64
    public var used: UInt64
    public var available: UInt64
    /// What the storage can snapshot, e.g. "raw via reflink", "qcow2 (offline)", "no".
    public var snapshots: String
}

/// A volume on a storage (`pvesm list`).
public struct VolumeInfo: Sendable {
    public var volume: VolumeID
    public var format: VolumeFormat
    public var size: UInt64
    public var vmid: Int
}

/// A snapshot of a volume (`zfs list -t snapshot`).
public struct SnapshotInfo: Sendable {
    public var volume: VolumeID
    public var name: String
    public var created: Date
    /// Bytes held only by the snapshot; nil when the storage cannot tell.
    public var used: UInt64?
}

/// A backup fleecing image (`vm-<vmid>-fleece-<n>`, as Proxmox names it; never
/// listed as a volume): a qcow2 file, or a thin LV that holds one.
public struct FleecingImage: Sendable, Equatable {
    /// What `qemu-img create` formats and QEMU opens.
    public var path: String
    /// QEMU opens a block device with `host_device`, a file with `file`.
    public var isBlockDevice: Bool

    public init(path: String, isBlockDevice: Bool) {
        self.path = path
        self.isBlockDevice = isBlockDevice
    }

    public static func name(vmid: Int, index: Int) -> String { "vm-\(vmid)-fleece-\(index)" }

    /// `vm-<vmid>-fleece-<n>` (+ `suffix`, ".qcow2" for files) taken apart; nil for any other name.
    public static func parse(_ name: String, suffix: String = "") -> (vmid: Int, index: Int)? {
        guard name.hasSuffix(suffix) else { return nil }
        let p = name.dropLast(suffix.count).split(separator: "-", omittingEmptySubsequences: false)
        guard p.count == 4, p[0] == "vm", p[2] == "fleece", let v = Int(p[1]), let i = Int(p[3]), v >= 0, i >= 0,
              Self.name(vmid: v, index: i) + suffix == name else { return nil }
        return (v, i)
    }

    /// The index of `name` if it is one of `vmid`'s images.
    public static func index(of name: String, vmid: Int, suffix: String = "") -> Int? {
        parse(name, suffix: suffix).flatMap { $0.vmid == vmid ? $0.index : nil }
    }
}

/// How a storage can snapshot a volume of a given format.
public enum SnapshotCapability: Sendable, Equatable {
    /// All requested volumes in one atomic operation (zfs snapshot a b c, btrfs subvolume).
    case atomic
    /// One volume at a time: the guest must be paused around the snapshots so they share a point in time.
    case perVolume
    /// Not at all; the reason names the storage and format.
    case unsupported(reason: String)

    public var canSnapshot: Bool {
        if case .unsupported = self { return false }
        return true
    }
}

/// One storage backend. Every plugin runs the same conformance suite
/// (Tests/StorageTests) on a real filesystem.
///
/// Contracts:
/// - `allocate` creates a zeroed volume of exactly `size` bytes (rounded up to 4 KiB) under the
///   next free name `vm-<vmid>-disk-<n>` and returns its id.
/// - `createSnapshot` either creates the snapshot for every named volume or none
///   (a partial failure removes what it created).
/// - A snapshot's content never changes while it exists, whatever is written to the volume.
/// - `openBlockSource` returns a reader of the volume's (or snapshot's) raw content;
///   closing it releases whatever it needed (NBD server, clone).
public protocol StoragePlugin: Sendable {
    var definition: StorageDefinition { get }

    /// Checks the storage is usable (path exists, pool imported); throws naming the storage.
    func activate() throws
    func status() throws -> StorageStatus
    func allocate(vmid: Int, size: UInt64, format: VolumeFormat?) throws -> VolumeID
    func free(_ volume: VolumeID) throws
    func list(vmid: Int?) throws -> [VolumeInfo]
    /// The path QEMU opens for the current volume, and its format.
    func path(of volume: VolumeID) throws -> (path: String, format: VolumeFormat)
    func snapshotCapability(for format: VolumeFormat) -> SnapshotCapability
    func createSnapshot(_ volumes: [VolumeID], name: String) throws
    /// `createSnapshot` split around a guest's freeze window: checks, the storage's flush
    /// and connections happen now, while the guest runs; only `take()` is left for the window.
    func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot
    func deleteSnapshot(_ volumes: [VolumeID], name: String) throws
    func listSnapshots() throws -> [SnapshotInfo]
    /// The names of `volume`'s snapshots, without what `listSnapshots` measures
    /// (creation time, space held): a backup asks this several times per disk,
    /// and on btrfs and reflink dir storages the measuring costs a process or
    /// an extent-map walk of every snapshot.
    func snapshotNames(of volume: VolumeID) throws -> [String]
    /// `snapshotNames(of:)` of several volumes (the default: one `listSnapshots`, as a
    /// `zfs list` or `lvs` answers for all volumes at once).
    func snapshotNames(of volumes: [VolumeID]) throws -> [VolumeID: [String]]
    func openBlockSource(_ volume: VolumeID, snapshot: String?) throws -> any BlockSource
    /// A reader of `snapshot` for an incremental backup that `changes` (this storage's
    /// `changedChunks`) describes: where the report carried the changed data, the reader
    /// may serve it without opening the snapshot. The default: `openBlockSource(_:snapshot:)`.
    func openBlockSource(_ volume: VolumeID, snapshot: String, changes: ChangedChunks) throws -> any BlockSource
    /// A writer of the volume's raw content (raw volumes; the default opens `path` with pwrite).
    func openForWriting(_ volume: VolumeID) throws -> any VolumeWriter
    /// The guest-visible size of a volume, without opening it for I/O (a
    /// running guest's qcow2 image is locked against other writers and readers).
    func size(of volume: VolumeID) throws -> UInt64
    /// `size(of:)` of a volume whose `path(of:)` the caller has (a backup resolves each disk once):
    /// where finding the path is a round trip (zfs-fuse's mountpoint), it is not asked again.
    func size(of volume: VolumeID, at path: String, format: VolumeFormat) throws -> UInt64
    /// Removes what a killed run left of `volumes`: snapshots whose name starts
    /// with `prefix`, and whatever was made to read them. Returns what it removed,
    /// and the snapshots it saw left (a backup takes its bases from there).
    func removeLeftovers(of volumes: [VolumeID], snapshotPrefix prefix: String) throws -> LeftoverRemoval
    /// The directory where backup fleecing images of `vmid` (`vm-<vmid>-fleece-<n>.qcow2`,
    /// never listed as volumes) are created; throws, naming the storage, when it cannot hold them.
    func fleecingDirectory(vmid: Int) throws -> String
    /// Room for the next fleecing image of `vmid`, for a disk of `size` bytes (the
    /// default: an empty file in `fleecingDirectory`, which `qemu-img create` formats).
    func allocateFleecingImage(vmid: Int, size: UInt64) throws -> FleecingImage
    /// The fleecing images of `vmid` on this storage (what a killed run left).
    func fleecingImages(vmid: Int) throws -> [FleecingImage]
    func freeFleecingImage(_ image: FleecingImage) throws
    /// Bytes left for fleecing images; throws, naming the storage, when it cannot hold them.
    func fleecingSpace(vmid: Int) throws -> UInt64
    /// Which `chunkSize` chunks of `volume` may differ between its snapshots
    /// `base` and `snapshot` (incremental backups, change-tracking.md). A
    /// superset is correct, a missing chunk is data loss. `.unknown(reason:)`
    /// when the storage cannot tell (the base is gone, the file was replaced,
    /// the storage has no way): the caller reads everything. Throws when
    /// `snapshot` does not exist.
    func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking
}

/// A storage snapshot made ready before a guest's freeze window: `take()` is
/// the one step left for inside it (an ioctl, a librbd call, a `zfs snapshot`),
/// with nothing of the guest's left in host caches for it to write out first.
/// Whatever preparing holds (a Ceph connection) is let go by `release()` or deinit.
public final class PreparedSnapshot: @unchecked Sendable {
    // @unchecked: one backup task uses it, one call at a time.
    private let takeBody: () throws -> Void
    private var releaseBody: (() -> Void)?
    /// Flushes that failed while preparing: they cost time inside the window, not correctness.
    public let warnings: [String]

    public init(warnings: [String] = [], take: @escaping () throws -> Void, release: (() -> Void)? = nil) {
        self.warnings = warnings
        takeBody = take
        releaseBody = release
    }

    public func take() throws { try takeBody() }

    public func release() {
        releaseBody?()
        releaseBody = nil
    }

    deinit { release() }

    /// syncfs of each filesystem holding one of `paths` (once per filesystem), fsync of a
    /// block device: a snapshot taken next has no dirty host pages of them to write first
    /// (a btrfs snapshot commits its transaction: issue 15 measured 2.2 s windows without this).
    /// Returns what could not be flushed; other paths (rbd: filenames for QEMU) are skipped.
    public static func flushHostCaches(_ paths: [String]) -> [String] {
        var seen = Set<UInt64>(), warnings: [String] = []
        for p in paths {
            var st = stat()
            guard stat(p, &st) == 0 else { continue }
            let block = (st.st_mode & S_IFMT) == S_IFBLK
            guard block || seen.insert(UInt64(st.st_dev)).inserted else { continue }
            do {
                let f = try File.openForReading(p)
                if block { try f.sync() } else { try f.syncFilesystem() }
                try f.close()
            } catch {
                warnings.append("cannot flush \(p) before the freeze: \(error)")
            }
        }
        return warnings
    }
}

extension StoragePlugin {
    public var id: String { definition.id }

    /// The default: the volumes' host caches flushed, then `createSnapshot` in the window.
    public func prepareSnapshot(_ volumes: [VolumeID], name: String) throws -> PreparedSnapshot {
        let warnings = PreparedSnapshot.flushHostCaches(try volumes.map { try path(of: $0).path })
        return PreparedSnapshot(warnings: warnings) { try createSnapshot(volumes, name: name) }
    }


    public func size(of volume: VolumeID) throws -> UInt64 {
        let (path, format) = try path(of: volume)
        return try ImageDirectory.virtualSize(path: path, format: format)
    }

    public func size(of volume: VolumeID, at path: String, format: VolumeFormat) throws -> UInt64 { try size(of: volume) }

    public func openForWriting(_ volume: VolumeID) throws -> any VolumeWriter {
        let (path, format) = try path(of: volume)
        guard format == .raw else {
            throw StorageError(.invalidArgument, "volume '\(volume)' is \(format.rawValue): only raw volumes are written directly")
        }
        return try FileVolumeWriter(path: path, name: volume.description)
    }

    public func removeLeftovers(of volumes: [VolumeID], snapshotPrefix prefix: String) throws -> LeftoverRemoval {
        try removeLeftoverSnapshots(of: volumes, snapshotPrefix: prefix)
    }

    public func snapshotNames(of volume: VolumeID) throws -> [String] {
        try listSnapshots().filter { $0.volume == volume }.map(\.name)
    }

    public func snapshotNames(of volumes: [VolumeID]) throws -> [VolumeID: [String]] {
        let wanted = Set(volumes)
        var names: [VolumeID: [String]] = [:]
        for s in try listSnapshots() where wanted.contains(s.volume) { names[s.volume, default: []].append(s.name) }
        return names
    }

    public func fleecingDirectory(vmid: Int) throws -> String {
        throw StorageError(.invalidArgument, "storage '\(id)' (\(definition.type.rawValue)) cannot hold fleecing images: use a 'dir' storage with content 'images', or an 'lvmthin' one")
    }

    public func allocateFleecingImage(vmid: Int, size: UInt64) throws -> FleecingImage {
        let dir = try fleecingDirectory(vmid: vmid)
        let taken = Set(try fleecingImages(vmid: vmid).map(\.path))
        var index = 0
        while taken.contains("\(dir)/\(FleecingImage.name(vmid: vmid, index: index)).qcow2") { index += 1 }
        let path = "\(dir)/\(FleecingImage.name(vmid: vmid, index: index)).qcow2"
        // Created at once, so the next image of the same backup takes the next name.
        try File.createNew(path).close()
        return FleecingImage(path: path, isBlockDevice: false)
    }

    public func fleecingImages(vmid: Int) throws -> [FleecingImage] {
        let dir = try fleecingDirectory(vmid: vmid)
        return try FileSystem.list(dir).filter { FleecingImage.index(of: $0, vmid: vmid, suffix: ".qcow2") != nil }.sorted()
            .map { FleecingImage(path: "\(dir)/\($0)", isBlockDevice: false) }
    }

    public func freeFleecingImage(_ image: FleecingImage) throws { try FileSystem.remove(image.path) }

    public func fleecingSpace(vmid: Int) throws -> UInt64 { try FileSystem.usage(try fleecingDirectory(vmid: vmid)).available }

    public func openBlockSource(_ volume: VolumeID, snapshot: String, changes: ChangedChunks) throws -> any BlockSource {
        try openBlockSource(volume, snapshot: snapshot)
    }

    public func changedChunks(_ volume: VolumeID, base: String, snapshot: String, chunkSize: UInt64) throws -> ChangeTracking {
        .unknown(reason: "storage '\(id)' (\(definition.type.rawValue)) cannot tell which blocks changed between snapshots")
    }

    /// The default part of `removeLeftovers`: delete matching snapshots, one name at a time.
    public func removeLeftoverSnapshots(of volumes: [VolumeID], snapshotPrefix prefix: String) throws -> LeftoverRemoval {
        let listed = try snapshotNames(of: volumes)
        var byName: [String: [VolumeID]] = [:]
        for (volume, names) in listed.sorted(by: { $0.key.description < $1.key.description }) {
            for name in names where name.hasPrefix(prefix) { byName[name, default: []].append(volume) }
        }
        var removed: [String] = []
        for (name, vols) in byName.sorted(by: { $0.key < $1.key }) {
            try deleteSnapshot(vols, name: name)
            removed.append("snapshot '\(name)' of \(vols.map(\.description).joined(separator: ", "))")
        }
        return LeftoverRemoval(removed: removed, volumes: volumes, listed: listed, prefix: prefix)
    }

    /// Capability for a volume, looking up its format.
    public func snapshotCapability(of volume: VolumeID) throws -> SnapshotCapability {
        snapshotCapability(for: try path(of: volume).format)
    }

    func checkOwnership(_ volume: VolumeID) throws {
        guard volume.storage == definition.id else {
            throw StorageError(.invalidArgument, "volume '\(volume)' belongs to storage '\(volume.storage)', not '\(definition.id)'")
        }
    }

    /// The error for a snapshot the storage cannot take; names storage, format and why.
    func snapshotUnsupported(_ format: VolumeFormat) -> StorageError? {
        guard case .unsupported(let reason) = snapshotCapability(for: format) else { return nil }
        return StorageError(.snapshotUnsupported, "storage '\(definition.id)' cannot snapshot \(format.rawValue) volumes: \(reason)")
    }

    /// Sizes are rounded up to whole 4 KiB blocks, as QEMU and VMA use them.
    func roundedSize(_ size: UInt64) throws -> UInt64 {
        guard size > 0 else { throw StorageError(.invalidArgument, "volume size must be greater than 0") }
        return (size + 4095) / 4096 * 4096
    }
}

/// What `removeLeftovers` removed, and the snapshots it left of each volume.
public struct LeftoverRemoval: Sendable {
    /// What was removed, one line each ("snapshot 'x' of …").
    public var removed: [String]
    /// The names of each volume's snapshots after the removal, from the listing it made
    /// (every volume asked, none → []): a backup's bases without listing them again (on
    /// zfs-fuse a `zfs list`, on LVM an `lvs`). Nil when the storage's listing does not show them.
    public var snapshots: [VolumeID: [String]]?

    public init(removed: [String], snapshots: [VolumeID: [String]]?) {
        self.removed = removed
        self.snapshots = snapshots
    }

    /// From a listing of `volumes`' snapshots, once those named `prefix…` are removed.
    public init(removed: [String], volumes: [VolumeID], listed: [VolumeID: [String]], prefix: String) {
        self.removed = removed
        var left: [VolumeID: [String]] = [:]
        for v in volumes { left[v] = (listed[v] ?? []).filter { !$0.hasPrefix(prefix) } }
        snapshots = left
    }
}
