import Foundation
import SnapdumpSystem
import Storage

/// Point-in-time state of a running guest's qcow2 disks on a `dir` storage,
/// which has no snapshot of its own: QEMU starts writing to a new overlay
/// for every such disk in one QMP `transaction` (atomic across disks), the
/// now-frozen original image is read over a private read-only NBD export,
/// and afterwards `block-commit` merges the overlay back and pivots the guest
/// onto the original again. Lives beside `DriveNodes`: which node a drive
/// uses now decides what the overlay and the commit name.
///
/// The overlay files and their QEMU nodes are made in `prepare`, while the
/// guest runs (`qemu-img create`, `blockdev-add`): creating a qcow2 file costs
/// tens of milliseconds of fsyncs, which `blockdev-snapshot-sync` spent inside
/// the guest's freeze window (issue 15). Inside the window only `create` runs,
/// one `transaction` of `blockdev-snapshot` actions. Prepared overlays that are
/// never used go again with `discard`.
public final class QCOW2Overlay: @unchecked Sendable {
    // @unchecked: used by one backup task at a time.
    public struct Disk: Sendable {
        public var key: String
        public var image: String
        public var overlay: String
        /// The format node the guest's device uses: `drive-<key>` after a start,
        /// `drive-<key>-moveN` after a live move-disk (QEMU cannot rename nodes).
        public var node: String
        public var overlayNode: String { node + "-snapdump" }
    }

    public let vmid: Int
    public private(set) var disks: [Disk]
    /// Progress lines (`merged overlay of scsi0 back into …`, `isError` false) and errors go here.
    let log: @Sendable (_ isError: Bool, _ message: String) -> Void

    /// `disks`: (drive key, image path) of running qcow2 drives; `tag` names the overlay files.
    public init(vmid: Int, disks: [(key: String, image: String)], tag: String, log: @escaping @Sendable (_ isError: Bool, _ message: String) -> Void) {
        self.vmid = vmid
        self.log = log
        self.disks = disks.map { Disk(key: $0.key, image: $0.image, overlay: "\($0.image).\(tag).overlay.qcow2",
                                      node: QEMUCommandLine.nodeName(for: $0.key)) }
    }

    /// The overlay file name suffix; `<image>.<tag>.overlay.qcow2`.
    public static let fileSuffix = ".overlay.qcow2"

    /// Asks QEMU which node each device uses now (see `DriveNodes`).
    public func resolveNodes(qmp: QMPClient) async throws {
        for i in disks.indices {
            guard let node = try await DriveNodes.formatNode(key: disks[i].key, qmp: qmp) else {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QEMU has no block device for \(disks[i].key)")
            }
            disks[i].node = node
        }
    }

    /// Overlay nodes added to QEMU (and files created) by `prepare`, not yet part of the guest's chain.
    private var prepared: [Disk] = []
    /// Whether `create` put the overlays under the guest's devices.
    public private(set) var isActive = false

    /// Everything `create` needs, made while the guest runs: each disk's overlay
    /// file (`qemu-img create`, backed by the image, the drive's size) and its
    /// qcow2 node in QEMU (`blockdev-add` with no backing yet, the drive's cache
    /// mode). On failure whatever was made is removed again.
    public func prepare(qmp: QMPClient) async throws {
        var drives: [DriveNodes.Drive] = []
        for i in disks.indices {
            guard let drive = try await DriveNodes.current(key: disks[i].key, qmp: qmp) else {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QEMU has no block device for \(disks[i].key)")
            }
            disks[i].node = drive.node
            drives.append(drive)
        }
        for d in disks where FileSystem.exists(d.overlay) {
            throw GuestError(vmid: vmid, .invalidArgument, "overlay \(d.overlay) already exists (left by an earlier run?): remove it after checking VM \(vmid) does not use it")
        }
        let cache = try await Self.cacheModes(qmp: qmp)
        do {
            for (d, drive) in zip(disks, drives) {
                let size = drive.virtualSize
                // -u: the image is open in QEMU; its name only goes into the header, for `qemu-img commit` after a crash.
                try await Blocking.run("overlay-create") {
                    _ = try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", d.image, "-F", "qcow2", d.overlay, "\(size)"])
                }
                prepared.append(d)
                var file: [String: JSONValue] = ["driver": .string("file"), "filename": .string(d.overlay)]
                if let c = cache[d.node] { file["cache"] = .object(["direct": .bool(c.direct), "no-flush": .bool(c.noFlush)]) }
                _ = try await qmp.execute("blockdev-add", arguments: [
                    "driver": .string("qcow2"), "node-name": .string(d.overlayNode), "file": .object(file), "backing": .null,
                ])
            }
        } catch {
            await discard(qmp: qmp)
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot prepare the qcow2 overlays: \(error)")
        }
    }

    /// `cache.direct` and `cache.no-flush` of each format node, for its overlay to behave alike.
    private static func cacheModes(qmp: QMPClient) async throws -> [String: (direct: Bool, noFlush: Bool)] {
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10))
        var result: [String: (direct: Bool, noFlush: Bool)] = [:]
        for n in nodes.arrayValue ?? [] {
            guard let name = n["node-name"]?.stringValue, let c = n["cache"] else { continue }
            result[name] = (c["direct"]?.boolValue ?? false, c["no-flush"]?.boolValue ?? false)
        }
        return result
    }

    /// Removes overlays `prepare` made that never went under the guest: their nodes and files.
    public func discard(qmp: QMPClient) async {
        for d in prepared.reversed() {
            _ = try? await qmp.execute("blockdev-del", arguments: ["node-name": .string(d.overlayNode)])
            try? FileSystem.remove(d.overlay)
        }
        prepared = []
    }

    /// One transaction: every disk gets its overlay at the same instant, or none
    /// does. `extraActions` join it (a dirty bitmap started at the same instant).
    /// On failure the prepared overlays are removed.
    public func create(qmp: QMPClient, extraActions: [JSONValue] = []) async throws {
        if prepared.isEmpty { try await prepare(qmp: qmp) }
        let actions: [JSONValue] = extraActions + disks.map { d in
            .object(["type": .string("blockdev-snapshot"),
                     "data": .object(["node": .string(d.node), "overlay": .string(d.overlayNode)])])
        }
        do {
            _ = try await qmp.execute("transaction", arguments: ["actions": .array(actions)])
        } catch {
            await discard(qmp: qmp)
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QMP transaction of qcow2 overlays failed: \(error)")
        }
        prepared = []
        isActive = true
    }

    /// Merges each overlay back into its image, removes its node and deletes
    /// the overlay file. An overlay the guest never wrote to (a run killed
    /// between `prepare` and `create`) is only removed.
    public func commit(qmp: QMPClient) async throws {
        var firstError: (any Error)?
        // The device now sits on the overlay node; its backing node is the one to commit into.
        var active = Set<String>()
        for i in disks.indices {
            if let node = try await DriveNodes.formatNode(key: disks[i].key, qmp: qmp), node.hasSuffix("-snapdump") {
                disks[i].node = String(node.dropLast("-snapdump".count))
                active.insert(disks[i].key)
            }
        }
        for d in disks {
            guard active.contains(d.key) else {
                // Never under the guest: nothing to merge, only its node (if QEMU still has it) and file go.
                _ = try? await qmp.execute("blockdev-del", arguments: ["node-name": .string(d.overlayNode)])
                try? FileSystem.remove(d.overlay)
                continue
            }
            let job = "snapdump-commit-\(d.key)"
            do {
                let mark = await qmp.eventMark
                _ = try await qmp.execute("block-commit", arguments: [
                    "job-id": .string(job), "device": .string(d.overlayNode),
                    "top-node": .string(d.overlayNode), "base-node": .string(d.node),
                ])
                _ = try await qmp.waitForEvent("BLOCK_JOB_READY", after: mark, timeout: .seconds(600)) { $0.data["device"]?.stringValue == job }
                let mark2 = await qmp.eventMark
                _ = try await qmp.execute("block-job-complete", arguments: ["device": .string(job)])
                _ = try await qmp.waitForEvent("BLOCK_JOB_COMPLETED", after: mark2, timeout: .seconds(600)) { $0.data["device"]?.stringValue == job }
                // A node made by blockdev-add stays (open, holding the file) until deleted; one made by an
                // older snapdump's blockdev-snapshot-sync is gone with the commit, and the delete fails harmlessly.
                _ = try? await qmp.execute("blockdev-del", arguments: ["node-name": .string(d.overlayNode)])
                try FileSystem.remove(d.overlay)
                log(false, "merged overlay of \(d.key) back into \(d.image)")
            } catch {
                let e = GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot merge overlay \(d.overlay) back into \(d.image): \(error)")
                log(true, e.message)
                firstError = firstError ?? e
            }
        }
        isActive = false
        if let firstError { throw firstError }
    }

    public func openSources() throws -> [String: any BlockSource] {
        var result: [String: any BlockSource] = [:]
        do {
            for d in disks {
                result[d.key] = try NBDBlockSource(image: d.image, format: .qcow2, snapshot: nil, name: "\(d.image) (frozen by overlay)")
            }
        } catch {
            for s in result.values { try? s.close() }
            throw error
        }
        return result
    }
}
