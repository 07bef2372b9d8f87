import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import Storage
@testable import Guest

/// DiskMove's rules without QEMU: node names, checks, config updates.
@Suite("Disk move without QEMU")
struct DiskMoveTests {
    @Test func targetNodeNamesAlternateSoTheyNeverClash() {
        #expect(DriveNodes.freeNodeName(for: "scsi0", taken: []) == "drive-scsi0")
        #expect(DriveNodes.freeNodeName(for: "scsi0", taken: ["drive-scsi0", "drive-scsi0-file"]) == "drive-scsi0-move1")
        // After the first move the canonical names are free again.
        #expect(DriveNodes.freeNodeName(for: "scsi0", taken: ["drive-scsi0-move1", "drive-scsi0-move1-file"]) == "drive-scsi0")
        // A leftover protocol node blocks its name too.
        #expect(DriveNodes.freeNodeName(for: "virtio1", taken: ["drive-virtio1", "drive-virtio1-file", "drive-virtio1-move1-file"]) == "drive-virtio1-move2")
        #expect(DriveNodes.fileNodeName(for: "drive-scsi0-move1") == "drive-scsi0-move1-file")
        // QEMU's node names are limited to 31 characters.
        #expect(DriveNodes.fileNodeName(for: DriveNodes.freeNodeName(for: "virtio15", taken: ["drive-virtio15"])).count < 32)
    }

    @Test func queryBlockQdevIDs() {
        #expect(DriveNodes.matches(qdev: "scsi0", key: "scsi0"))
        #expect(DriveNodes.matches(qdev: "/machine/peripheral/virtio0/virtio-backend", key: "virtio0"))
        #expect(!DriveNodes.matches(qdev: "/machine/peripheral/virtio01/virtio-backend", key: "virtio0"))
        #expect(!DriveNodes.matches(qdev: "scsi01", key: "scsi0"))
    }

    @Test func currentNodeFromQueryBlock() async throws {
        let (a, b) = try makeSocketPair()
        let fake = FakePeer(fd: b)
        async let connecting = QMPClient.connect(adoptingSocket: a, label: "fake")
        await fake.send(QMPClientFakeTests.greeting)
        let caps = try await fake.readRequest()
        await fake.send(#"{"return": {}, "id": \#(caps["id"]!.encoded())}"# + "\n")
        let qmp = try await connecting
        let lookup = Task { try await DriveNodes.current(key: "virtio0", qmp: qmp) }
        let req = try await fake.readRequest()
        #expect(req["execute"] == "query-block")
        let reply = #"""
            {"return": [
              {"device": "", "qdev": "scsi0", "inserted": {"node-name": "drive-scsi0", "drv": "raw", "backing_file_depth": 0, "file": "/a.raw", "image": {"virtual-size": 1048576, "format": "raw"}}},
              {"device": "", "qdev": "/machine/peripheral/virtio0/virtio-backend", "inserted": {"node-name": "drive-virtio0-move1", "drv": "qcow2", "backing_file_depth": 1, "file": "/b.qcow2", "image": {"virtual-size": 67108864, "format": "qcow2"}}}
            ], "id": \#(req["id"]!.encoded())}
            """#
        await fake.send(reply.replacingOccurrences(of: "\n", with: " ") + "\n")
        let drive = try #require(try await lookup.value)
        #expect(drive == DriveNodes.Drive(key: "virtio0", node: "drive-virtio0-move1", file: "/b.qcow2", format: "qcow2",
                                          virtualSize: 67_108_864, backingDepth: 1))
        await qmp.close()
        await fake.close()
    }

    @Test func unusedTakesTheLowestFreeIndexOnce() {
        var c = VMConfig(vmid: 100)
        c.unused = [0: "a:1", 2: "a:3"]
        #expect(c.addUnused("b:1") == "unused1")
        #expect(c.addUnused("b:2") == "unused3")
        #expect(c.addUnused("a:3") == "unused2")
        #expect(c.unused == [0: "a:1", 1: "b:1", 2: "a:3", 3: "b:2"])
    }

    @Test func blockdevAddArgumentsMatchTheCommandLine() throws {
        let disk = try VMDisk.parse(key: "scsi0", value: "loc:100/vm-100-disk-0.raw,cache=unsafe,discard=on", file: "t", line: 1)
        let o = DriveBlockOptions(disk: disk, path: "/img", directIOSupported: { _ in true })
        #expect(!o.direct && o.noFlush && o.discard)
        #expect(o.fileBlockdev(node: "n-file", path: "/img") == [
            "node-name": "n-file", "driver": "file", "filename": "/img", "cache": ["no-flush": true], "discard": "unmap",
        ])
        #expect(o.fileArgument(node: "n-file", path: "/img") == "node-name=n-file,driver=file,filename=/img,cache.no-flush=on,discard=unmap")
        let d2 = try VMDisk.parse(key: "scsi0", value: "loc:100/vm-100-disk-0.raw", file: "t", line: 1)
        #expect(DriveBlockOptions(disk: d2, path: "/img", directIOSupported: { _ in true }).fileBlockdev(node: "f", path: "/img")["cache"] == ["direct": true])
        #expect(DriveBlockOptions(disk: d2, path: "/img", directIOSupported: { _ in false }).fileBlockdev(node: "f", path: "/img")["cache"] == nil)
        #expect(DriveBlockOptions(disk: d2, path: "/img").formatBlockdev(node: "f", format: "qcow2", fileNode: "f-file") == [
            "node-name": "f", "driver": "qcow2", "file": "f-file",
        ])
    }

    /// An rbd volume's path (QEMU's legacy rbd filename) becomes a `driver=rbd`
    /// protocol node with pool, image, conf and user; cache=none turns librbd's cache off.
    @Test func rbdVolumesOpenThroughQEMUsRBDDriver() throws {
        let disk = try VMDisk.parse(key: "scsi0", value: "ceph:vm-100-disk-0,aio=native", file: "t", line: 1)
        let path = "rbd:vms/vm-100-disk-0:conf=/run/snap\\:dump/ceph.conf:id=backup"
        let o = DriveBlockOptions(disk: disk, path: path, directIOSupported: { _ in false })
        #expect(o.driver == "rbd" && o.direct && o.aio == nil)
        #expect(o.fileBlockdev(node: "n-file", path: path) == [
            "node-name": "n-file", "driver": "rbd", "pool": "vms", "image": "vm-100-disk-0",
            "conf": "/run/snap:dump/ceph.conf", "user": "backup", "cache": ["direct": true],
        ])
        #expect(o.fileArgument(node: "n-file", path: path)
            == "node-name=n-file,driver=rbd,pool=vms,image=vm-100-disk-0,conf=/run/snap:dump/ceph.conf,user=backup,cache.direct=on")
        #expect(RBDImageSpec("rbd:vms/img") == RBDImageSpec("rbd:vms/img:id=admin").map { var s = $0; s.user = nil; return s })
        #expect(RBDImageSpec("rbd:vms") == nil && RBDImageSpec("rbd:vms/img:mon_host=x") == nil && RBDImageSpec("/dev/rbd0") == nil)
    }

    // MARK: Checks before anything is touched

    /// A config dir with dir storages `a` (raw) and `q` (qcow2 default), a
    /// zfspool `z` (never touched), and VM 100 with the given disks.
    func withPlanFixture(_ disks: [String: String], _ body: (DiskMove, SnapdumpPaths) throws -> Void) throws {
        let dir = try scratch("plan")
        defer { removeTree(dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        let cfg = "dir: a\n\tpath \(dir)/a\n\tcontent images\n\ndir: q\n\tpath \(dir)/q\n\tformat qcow2\n\tcontent images\n\n"
            + "dir: b\n\tpath \(dir)/b\n\tcontent backup\n\nzfspool: z\n\tpool nopool/x\n\tcontent images\n"
        try FileSystem.writeAtomically(paths.storageConfig, cfg)
        for d in ["a/images/100", "q/images/100", "b"] { try FileManager.default.createDirectory(atPath: "\(dir)/\(d)", withIntermediateDirectories: true) }
        for f in ["a/images/100/vm-100-disk-0.raw", "a/images/100/vm-100-disk-1.qcow2"] {
            FileManager.default.createFile(atPath: "\(dir)/\(f)", contents: Data(count: 4096))
        }
        var c = VMConfig(vmid: 100)
        for (k, v) in disks { c.setDisk(try VMDisk.parse(key: k, value: v, file: "t", line: 1)) }
        try c.save(paths: paths)
        let move = DiskMove(lifecycle: VMLifecycle(paths: paths), storages: try StorageRegistry(paths: paths))
        try body(move, paths)
    }

    func refusal(_ move: DiskMove, _ r: DiskMove.Request, sourceLocation: SourceLocation = #_sourceLocation) -> String {
        do {
            _ = try move.makePlan(r)
            Issue.record("\(r) was accepted", sourceLocation: sourceLocation)
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test func planRefusesWhatProxmoxRefuses() throws {
        try withPlanFixture([
            "scsi0": "a:100/vm-100-disk-0.raw,size=4K", "scsi1": "a:100/vm-100-disk-1.qcow2",
            "ide2": "none,media=cdrom", "virtio0": "/dev/sdz",
        ]) { move, _ in
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "a")).contains("same storage"))
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "a", format: .raw)).contains("same storage"))
            #expect(refusal(move, .init(vmid: 100, disk: "scsi4", targetStorage: "q")).contains("disk 'scsi4' does not exist"))
            #expect(refusal(move, .init(vmid: 100, disk: "foo", targetStorage: "q")).contains("not a disk key"))
            #expect(refusal(move, .init(vmid: 100, disk: "ide2", targetStorage: "q")).contains("cdrom"))
            #expect(refusal(move, .init(vmid: 100, disk: "virtio0", targetStorage: "q")).contains("/dev/sdz"))
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "nosuch")).contains("storage 'nosuch' does not exist"))
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "b")).contains("does not hold VM images"))
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "z", format: .qcow2)).contains("cannot hold qcow2"))
            #expect(refusal(move, .init(vmid: 101, disk: "scsi0", targetStorage: "q")).contains("VM 101 does not exist"))
        }
    }

    @Test func planPicksTheSourceFormatWhenTheTargetHoldsIt() throws {
        try withPlanFixture(["scsi0": "a:100/vm-100-disk-0.raw", "scsi1": "a:100/vm-100-disk-1.qcow2"]) { move, _ in
            func format(_ disk: String, _ store: String, _ f: VolumeFormat? = nil) throws -> VolumeFormat {
                try move.makePlan(.init(vmid: 100, disk: disk, targetStorage: store, format: f)).format
            }
            let formats = try [format("scsi0", "q"), format("scsi1", "q"), format("scsi1", "z"), format("scsi1", "a", .raw)]
            #expect(formats == [.raw, .qcow2, .raw, .raw])
        }
    }

    @Test func lockedVMIsRefusedWithTheLocksName() async throws {
        try withPlanFixture(["scsi0": "a:100/vm-100-disk-0.raw"]) { move, paths in
            var c = try VMConfig.load(vmid: 100, paths: paths)
            c.lock = "backup"
            try c.save(paths: paths)
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "q")).contains("VM 100 is locked (backup)"))
        }
    }

    @Test func deleteIsRefusedForADiskInAVMSnapshot() throws {
        try withPlanFixture(["scsi0": "a:100/vm-100-disk-0.raw"]) { move, paths in
            var c = try VMConfig.load(vmid: 100, paths: paths)
            c.trailingSections = "[before]\nscsi0: a:100/vm-100-disk-0.raw\nsnaptime: 1700000000\n"
            try c.save(paths: paths)
            #expect(refusal(move, .init(vmid: 100, disk: "scsi0", targetStorage: "q", deleteSource: true)).contains("snapshots"))
            #expect((try? move.makePlan(.init(vmid: 100, disk: "scsi0", targetStorage: "q"))) != nil)
        }
    }
}
