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

    private var prepared = false

    /// What `create` needs from QEMU and the disk, asked before a guest's freeze window:
    /// the nodes (a QMP round trip each) and that no overlay file is in the way.
    public func prepare(qmp: QMPClient) async throws {
        try await resolveNodes(qmp: qmp)
        for d in disks where FileSystem.exists(d.overlay) {
            throw GuestError(vmid: vmid, .invalidArgument, "overlay \(d.overlay) already exists (left by an earlier run?): remove it after checking VM \(vmid) does not use it")
        }
        prepared = true
    }

    /// One transaction: every disk gets its overlay at the same instant, or none does.
    public func create(qmp: QMPClient) async throws {
        if !prepared { try await prepare(qmp: qmp) }
        let actions: [JSONValue] = disks.map { d in
            .object(["type": .string("blockdev-snapshot-sync"),
                     "data": .object(["node-name": .string(d.node), "snapshot-file": .string(d.overlay),
                                      "snapshot-node-name": .string(d.overlayNode), "format": .string("qcow2")])])
        }
        do {
            _ = try await qmp.execute("transaction", arguments: ["actions": .array(actions)])
        } catch {
            for d in disks { try? FileSystem.remove(d.overlay) }
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QMP transaction of qcow2 overlays failed: \(error)")
        }
    }

    /// Merges each overlay back into its image and deletes the overlay file.
    public func commit(qmp: QMPClient) async throws {
        var firstError: (any Error)?
        // The device now sits on the overlay node; its backing node is the one to commit into.
        for i in disks.indices {
            if let node = try await DriveNodes.formatNode(key: disks[i].key, qmp: qmp), node.hasSuffix("-snapdump") {
                disks[i].node = String(node.dropLast("-snapdump".count))
            }
        }
        for d in disks {
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
                try FileSystem.remove(d.overlay)
                log(false, "merged overlay of \(d.key) back into \(d.image)")
            } catch {
                let e = GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot merge overlay \(d.overlay) back into \(d.image): \(error)")
                log(true, e.message)
                firstError = firstError ?? e
            }
        }
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
