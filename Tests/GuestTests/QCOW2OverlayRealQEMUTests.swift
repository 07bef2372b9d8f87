import Foundation
import Testing
import SnapdumpSystem
@testable import Guest

/// `QCOW2Overlay` against a real QEMU (no guest: `-S`; writes go through the
/// device's BlockBackend with HMP `qemu-io`): overlays prepared before the
/// window, one transaction inside it, merged back and removed afterwards, and
/// nothing left when the window never comes.
@Suite("qcow2 overlays with a real QEMU", .enabled(if: QEMU.enabled))
struct QCOW2OverlayRealQEMUTests {
    struct Setup {
        var dir: String
        var image: String
        var socket: String
        var args: [String]
    }

    func setup(_ label: String) throws -> Setup {
        try QEMU.require()
        let dir = try scratch(label)
        let image = dir + "/vm-100-disk-0.qcow2"
        _ = try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
        let socket = dir + "/qmp.sock"
        return Setup(dir: dir, image: image, socket: socket, args: [
            "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-qmp", "unix:\(socket),server=on,wait=off",
            "-blockdev", "node-name=drive-scsi0-file,driver=file,filename=\(image),cache.direct=on",
            "-blockdev", "node-name=drive-scsi0,driver=qcow2,file=drive-scsi0-file",
            "-device", "virtio-blk-pci,drive=drive-scsi0,id=scsi0",
        ])
    }

    /// A write through the guest's device (so into whatever node is on top).
    func guestWrite(_ qmp: QMPClient, pattern: UInt8, offset: String, length: String) async throws {
        _ = try await qmp.execute("human-monitor-command", arguments: [
            "command-line": .string("qemu-io -d /machine/peripheral/scsi0/virtio-backend \"write -P \(pattern) \(offset) \(length)\""),
        ])
    }

    func nodes(_ qmp: QMPClient) async throws -> Set<String> { try await DriveNodes.names(qmp: qmp) }

    func files(_ s: Setup) throws -> [String] { try FileSystem.list(s.dir).filter { $0.hasSuffix(".qcow2") }.sorted() }

    @Test func preparedBeforeTheWindowMergedBackAfterIt() async throws {
        let s = try setup("overlay-merge")
        defer { removeTree(s.dir) }
        try await withQEMU(s.args) { qemu in
            let qmp = try await connectQMP(s.socket)
            try await guestWrite(qmp, pattern: 0x11, offset: "0", length: "1M")
            let o = QCOW2Overlay(vmid: 100, disks: [("scsi0", s.image)], tag: "snapdump-1", log: { _, _ in })

            try await o.prepare(qmp: qmp)
            // Made while the guest runs: the file and its node, not yet under the device.
            #expect(try files(s) == ["vm-100-disk-0.qcow2", "vm-100-disk-0.qcow2.snapdump-1.overlay.qcow2"])
            #expect(try await nodes(qmp).contains("drive-scsi0-snapdump"))
            #expect(try await DriveNodes.formatNode(key: "scsi0", qmp: qmp) == "drive-scsi0")

            try await o.create(qmp: qmp)
            #expect(o.isActive)
            #expect(try await DriveNodes.formatNode(key: "scsi0", qmp: qmp) == "drive-scsi0-snapdump")
            // The guest now writes into the overlay; the image is frozen.
            try await guestWrite(qmp, pattern: 0x22, offset: "1M", length: "1M")

            try await o.commit(qmp: qmp)
            #expect(try await DriveNodes.formatNode(key: "scsi0", qmp: qmp) == "drive-scsi0")
            #expect(try await !nodes(qmp).contains("drive-scsi0-snapdump"), "the overlay's node stays open after the merge")
            #expect(try files(s) == ["vm-100-disk-0.qcow2"])
            _ = try await qmp.execute("quit")
            #expect(await qemu.waitForExit(timeout: .seconds(10)))
        }
        // Both writes are in the image itself.
        let check = try Command.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M", s.image])
        #expect(!check.contains("Pattern verification failed") && check.contains("read 1048576/1048576 bytes at offset 1048576"), "\(check)")
    }

    @Test func aWindowThatNeverComesLeavesNothing() async throws {
        let s = try setup("overlay-discard")
        defer { removeTree(s.dir) }
        try await withQEMU(s.args) { _ in
            let qmp = try await connectQMP(s.socket)
            let before = try await nodes(qmp)

            // Prepared, then the window is given up (freeze failed, interrupted): discard.
            let o = QCOW2Overlay(vmid: 100, disks: [("scsi0", s.image)], tag: "snapdump-1", log: { _, _ in })
            try await o.prepare(qmp: qmp)
            await o.discard(qmp: qmp)
            #expect(try await nodes(qmp) == before)
            #expect(try files(s) == ["vm-100-disk-0.qcow2"])

            // The transaction itself fails (an action QEMU refuses): nothing is half made.
            let o2 = QCOW2Overlay(vmid: 100, disks: [("scsi0", s.image)], tag: "snapdump-2", log: { _, _ in })
            try await o2.prepare(qmp: qmp)
            let bad: JSONValue = .object(["type": "block-dirty-bitmap-add", "data": .object(["node": "no-such-node", "name": "x"])])
            await #expect(throws: GuestError.self) { try await o2.create(qmp: qmp, extraActions: [bad]) }
            #expect(!o2.isActive)
            #expect(try await nodes(qmp) == before)
            #expect(try await DriveNodes.formatNode(key: "scsi0", qmp: qmp) == "drive-scsi0")
            #expect(try files(s) == ["vm-100-disk-0.qcow2"])

            // A run killed between prepare and create leaves a file and a node: the next run's commit only removes them.
            let o3 = QCOW2Overlay(vmid: 100, disks: [("scsi0", s.image)], tag: "snapdump-3", log: { _, _ in })
            try await o3.prepare(qmp: qmp)
            let next = QCOW2Overlay(vmid: 100, disks: [("scsi0", s.image)], tag: "snapdump-3", log: { _, _ in })
            try await next.commit(qmp: qmp)
            #expect(try await nodes(qmp) == before)
            #expect(try files(s) == ["vm-100-disk-0.qcow2"])
        }
    }
}
