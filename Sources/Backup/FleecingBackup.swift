import Foundation
import Guest
import SnapdumpSystem
import Storage

/// Snapshot mode without a storage snapshot: QEMU backup fleecing (`Guest.Fleecing`)
/// of every disk, with the fleecing images on the fleecing storage
/// (`<images>/<vmid>/vm-<vmid>-fleece-<n>.qcow2` on `dir`, thin LVs
/// `vm-<vmid>-fleece-<n>` holding the qcow2 on `lvmthin`). The guest is never paused;
/// its downtime is the fs-freeze window only.
///
/// Each image gets a write threshold: the fleecing storage's free space minus
/// a reserve, shared among the disks by size. Crossing it aborts the fleecing
/// (and so the backup) while the storage still has room, so the guest never
/// sees a full fleecing storage.
final class FleecingBackup: @unchecked Sendable {
    // @unchecked: used from the one task that runs the backup (and `Fleecing`, an actor).
    let vmid: Int
    let disks: [DiskPlan]
    let plugin: any StoragePlugin
    let socket: String
    let log: TaskLog
    private(set) var images: [(key: String, image: FleecingImage)] = []
    private var thresholds: [String: UInt64] = [:]
    private var session: Fleecing?
    /// Per disk key: the dirty bitmaps of incremental forever (`FleecingIncremental`), started and stopped with the jobs.
    var bitmaps: [String: (start: String, export: String?)] = [:]

    /// Checks the fleecing storage; throws (naming it) before anything is touched.
    init(vmid: Int, disks: [DiskPlan], settings: FleecingSettings, storages: StorageRegistry, socket: String, log: TaskLog) throws {
        guard let id = settings.storage else {
            throw BackupError("fleecing is enabled but names no storage: set 'fleecing enabled=1,storage=<id>'")
        }
        do { plugin = try storages.plugin(id) } catch { throw BackupError("fleecing storage '\(id)': \(error)") }
        self.vmid = vmid
        self.disks = disks
        self.socket = socket
        self.log = log
        _ = try plugin.fleecingSpace(vmid: vmid)
    }

    /// The room left after the reserve, shared by the disks in proportion to their
    /// size. The reserve (a quarter of the free space, 8 MiB to 2 GiB) absorbs what
    /// the guest writes between the threshold event and the end of the job.
    static func limits(available: UInt64, sizes: [UInt64]) -> [UInt64]? {
        let reserve = min(max(available / 4, 8 << 20), 2 << 30)
        guard available > reserve + (1 << 20) else { return nil }
        let usable = available - reserve
        let total = max(1, sizes.reduce(0, +))
        return sizes.map { UInt64((Double(usable) * Double($0) / Double(total)).rounded(.down)) }
    }

    /// Creates the images (before the freeze: `qemu-img` takes a while) and their limits.
    func prepare() throws {
        for d in disks {
            let image = try plugin.allocateFleecingImage(vmid: vmid, size: d.size)
            // Recorded first: `finish` frees it whatever happens next.
            images.append((d.key, image))
            // The recorded backing is informational (QEMU is given the live node); -u: do not open it.
            try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", d.path, "-F", d.format.rawValue, image.path, "\(d.size)"])
        }
        let available = try plugin.fleecingSpace(vmid: vmid)
        guard let shares = Self.limits(available: available, sizes: disks.map(\.size)) else {
            throw BackupError("fleecing storage '\(plugin.id)' has only \(Formatting.bytes(available)) free: too little for fleecing images")
        }
        for (i, image) in images.enumerated() {
            // The threshold is an offset in the image's file node: where the new qcow2 ends (a file's
            // size; on a block device its metadata, well under the 1 MiB counted, comes first).
            let base = image.image.isBlockDevice ? 1 << 20 : (try? File.openForReading(image.image.path).size()) ?? 0
            thresholds[image.key] = base + shares[i]
        }
        let limit = shares.reduce(0, +)
        log.info("fleecing images on storage '\(plugin.id)': \(images.map { ($0.image.path as NSString).lastPathComponent }.joined(separator: ", ")),"
                 + " limited to \(Formatting.bytes(limit)) of \(Formatting.bytes(available)) free")
        let diskBytes = disks.reduce(0) { $0 + $1.size }
        if limit < diskBytes {
            log.info("the backup fails (the guest keeps running) if the guest overwrites more than \(Formatting.bytes(limit)) meanwhile")
        }
    }

    /// Starts fleecing in QEMU, all disks in one transaction, on the freeze
    /// window's QMP session `qmp`, which stays with the fleecing's watch
    /// from now on (closed by `finish`).
    func start(qmp: QMPClient, lifecycle: VMLifecycle) async throws {
        let log = self.log, vmid = self.vmid
        try? FileSystem.remove(socket)
        session = try await Fleecing.start(qmp: qmp, connect: { try await lifecycle.connectQMP(vmid: vmid) }, vmid: vmid,
                                           disks: images.map { Fleecing.Disk(key: $0.key, image: $0.image.path, blockDevice: $0.image.isBlockDevice,
                                                                                               threshold: thresholds[$0.key],
                                                                                               startBitmap: bitmaps[$0.key]?.start,
                                                                                               exportBitmap: bitmaps[$0.key]?.export) },
                                           socket: socket, log: { line in
            if line.hasPrefix("ERROR: ") { log.error(String(line.dropFirst(7))) } else if line.hasPrefix("WARN: ") { log.warn(String(line.dropFirst(6))) } else { log.info(line) }
        })
    }

    /// Hands QEMU's monitor back while a hook script runs (QMP serves one client at a time).
    func letGo() async { await session?.letGo() }

    /// Watches again after a hook; what happened meanwhile is asked of QEMU.
    func watchAgain() async throws { try await session?.watchAgain() }

    /// Readers of the point-in-time state, one per disk (QEMU's NBD export named by the key).
    func openSources() throws -> [String: any BlockSource] {
        var result: [String: any BlockSource] = [:]
        do {
            for d in disks {
                result[d.key] = try NBDBlockSource(socket: socket, name: "\(d.volume) (fleecing)", exportName: d.key)
            }
        } catch {
            for s in result.values { try? s.close() }
            throw error
        }
        return result
    }

    /// Why QEMU's side was aborted during the backup, if it was.
    var failure: String? {
        get async { await session?.failure }
    }

    /// Removes the fleecing from QEMU (export before job), then the images. Every path out.
    func finish() async throws {
        var firstError: (any Error)?
        if let session {
            do { try await session.teardown() } catch { firstError = error }
        }
        try? FileSystem.remove(socket)
        // An image QEMU may still have open is kept (removing it would not free the space anyway).
        if firstError == nil {
            for (_, image) in images {
                do {
                    // A file's size is what the guest overwrote meanwhile: the figure for sizing the fleecing storage.
                    let size = image.isBlockDevice ? "" : (try? File.openForReading(image.path).size()).map { " (\(Formatting.bytes($0)))" } ?? ""
                    try plugin.freeFleecingImage(image)
                    log.info("removed fleecing image \(image.path)\(size)")
                } catch { firstError = firstError ?? error }
            }
            images = []
        }
        if let firstError { throw firstError }
    }

    /// Fleecing images of `vmid` on `plugin` left by a killed run (QEMU's side is
    /// removed first, by `Fleecing.removeLeftovers`). Returns the removed paths.
    static func removeLeftoverImages(vmid: Int, plugin: any StoragePlugin) throws -> [String] {
        guard let images = try? plugin.fleecingImages(vmid: vmid) else { return [] }
        for image in images { try plugin.freeFleecingImage(image) }
        return images.map(\.path)
    }
}
