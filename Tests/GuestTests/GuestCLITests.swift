#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// The test guest driven through the real `snapdump` binary on every
/// storage type, and live disk moves while its workload writes. Runs when
/// QEMU and the fixtures are there; with SNAPDUMP_INTEGRATION=1 anything
/// missing is a failure. One QEMU at a time (`.serialized`): the hosts have
/// two cores and boots under TCG take 4–9 s.
@Suite("Guests through the CLI (real QEMU)", .serialized, .enabled(if: TestGuest.enabled))
struct GuestCLITests {
    /// Boot, heartbeats, suspend (they stop), resume (they go on), `vm shutdown`
    /// (QEMU exits, the disk's records are consistent up to the last heartbeat).
    @Test("boot, suspend, resume and shut down on each storage type", arguments: TestStorageKind.allCases)
    func lifecycleOnStorage(_ kind: TestStorageKind) async throws {
        try Integration.need(kind.fixture)
        try QEMU.require()
        let guest = try await TestGuest.outputs()
        let vmid = 931
        try await GuestHarness.run("life-\(kind.rawValue)") { h in
            try h.addStorage("st", kind)
            try h.createGuest(vmid, storage: "st", guest: guest)
            let config = try h.config(vmid)
            let volid = try #require(config.disk("scsi0")?.volid)
            let image = try h.volumePath(volid)
            #expect(kind == .rbd ? image.hasPrefix("rbd:") : image.hasSuffix(".\(kind.imageFormat)"), "\(image)")

            try await h.startAndWaitForHeartbeats(vmid)
            #expect(try h.mustRun(["vm", "status", String(vmid)]).contains("running"))
            // Invariant 7: the run dirs and the disk are root's only. QEMU creates its socket and console
            // log after -daemonize, which sets umask 027 (group root, as Proxmox's sockets): no bits for
            // others, and the 0700 run dir keeps everyone but root out anyway.
            // (An rbd image is no file: Ceph's object store holds it.)
            var owned: [(String, mode_t)] = [(h.paths.runDir, 0o077), (h.paths.qemuRunDir, 0o077),
                                             (h.paths.qmpSocket(vmid), 0o007), (h.paths.consoleLog(vmid), 0o007)]
            if kind != .rbd { owned.append((image, 0o077)) }
            for (p, forbidden) in owned {
                var st = stat()
                #expect(lstat(p, &st) == 0 && st.st_mode & forbidden == 0, "\(p) is \(String(st.st_mode & 0o7777, radix: 8))")
            }

            // Suspend: no heartbeat for over a second.
            try h.mustRun(["vm", "suspend", String(vmid)])
            try await Task.sleep(for: .milliseconds(300))
            let paused = h.lastHeartbeat(vmid)
            try await Task.sleep(for: .milliseconds(1200))
            #expect(h.lastHeartbeat(vmid) == paused, "heartbeats went on while suspended")
            #expect(try h.mustRun(["vm", "status", String(vmid)]).contains("paused"))

            // Resume: they continue.
            try h.mustRun(["vm", "resume", String(vmid)])
            try await h.waitForHeartbeat(vmid, above: paused, timeout: .seconds(20))

            // Clean shutdown: QEMU exits, every heartbeat's record is on disk.
            let pid = try #require(h.pid(vmid))
            try h.mustRun(["vm", "shutdown", String(vmid), "--timeout", "60"])
            #expect(await h.waitForExit(vmid, pid: pid, timeout: .seconds(10)))
            #expect(try h.mustRun(["vm", "status", String(vmid)]).contains("stopped"))
            let log = try FileSystem.readText(h.consoleLog(vmid))
            #expect(log.contains("WORKLOAD STOP"))
            let check = try h.checkRecords(image, format: kind.imageFormat, checker: guest.checker)
            #expect(check.consistent, "\(check.output)")
            #expect(check.lastContiguous == h.lastHeartbeat(vmid), "\(check.output)")
        }
    }

    /// The guest's disk moves live dir(raw) → btrfs → zfspool → dir(qcow2,
    /// --delete) while its workload writes, then, stopped, back to btrfs as
    /// raw; a mirror that runs out of space first is undone. Records are
    /// checked on every volume the data passed through.
    @Test("move-disk live across storages while the workload writes, and offline")
    func moveDiskLiveAndOffline() async throws {
        try Integration.need("SNAPDUMP_TEST_DIR", "SNAPDUMP_TEST_BTRFS", "SNAPDUMP_TEST_ZPOOL", "SNAPDUMP_TEST_SMALLFS")
        try QEMU.require()
        let guest = try await TestGuest.outputs()
        let vmid = 932
        try await GuestHarness.run("move") { h in
            try h.addStorage("loc", .dirRaw)
            try h.addStorage("bt", .btrfs)
            try h.addStorage("zp", .zfspool)
            try h.addStorage("qc", .dirQcow2)
            try h.addDirStorage("small", under: try Integration.require("SNAPDUMP_TEST_SMALLFS"))
            try h.createGuest(vmid, storage: "loc", size: "128M", guest: guest)
            let locVolume = try #require(try h.config(vmid).disk("scsi0")?.volid)
            let locPath = try h.volumePath(locVolume)
            // 96 MiB of data past the records' area: the mirror has to copy it
            // (takes a moment, and does not fit on the 55 MiB "small" storage).
            try Self.fill(locPath, from: 32 << 20, count: 96 << 20)

            try await h.startAndWaitForHeartbeats(vmid)
            let pid = try #require(h.pid(vmid))

            // Bad input against the running VM: one clear error, nothing changed.
            let filesBefore = h.storageFiles()
            try h.expectRefused(["vm", "start", String(vmid)], vmid: vmid, mentioning: ["VM \(vmid)", "already running"])
            try h.expectRefused(["vm", "destroy", String(vmid)], vmid: vmid, mentioning: ["VM \(vmid)", "running"])
            try h.expectRefused(["vm", "move-disk", String(vmid), "scsi0", "nosuchstore"], vmid: vmid, mentioning: ["nosuchstore"])
            try h.expectRefused(["vm", "move-disk", String(vmid), "scsi3", "bt"], vmid: vmid, mentioning: ["VM \(vmid)", "scsi3", "does not exist"])
            try h.expectRefused(["vm", "move-disk", String(vmid), "scsi0", "loc"], vmid: vmid, mentioning: ["same storage"])
            try h.expectRefused(["vm", "move-disk", String(vmid), "scsi0", "zp", "--format", "qcow2"], vmid: vmid, mentioning: ["zp", "qcow2"])
            #expect(h.storageFiles() == filesBefore)
            #expect(h.pid(vmid) == pid)

            // A mirror that fails (ENOSPC on the target) is cancelled and undone.
            let cfgBefore = try h.configText(vmid)
            let failed = try h.run(["vm", "move-disk", String(vmid), "scsi0", "small"])
            #expect(failed.status != 0)
            #expect(failed.stderr.contains("space"), "\(failed.stderr)")
            #expect(try h.configText(vmid) == cfgBefore)
            #expect(h.storageFiles() == filesBefore, "the failed move left volumes behind")
            #expect(try await Self.nodes(h, vmid) == ["drive-scsi0", "drive-scsi0-file"])
            try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid))

            // SIGINT while mirroring (slowed down by --bwlimit): cancelled and undone.
            let interrupted = try h.spawn(["vm", "move-disk", String(vmid), "scsi0", "bt", "--bwlimit", "8192"])
            _ = try await interrupted.waitForOutput("drive mirror is starting", timeout: .seconds(30))
            try await Task.sleep(for: .seconds(1))
            interrupted.signal(SIGINT)
            let status = try await interrupted.waitForExit(timeout: .seconds(30))
            #expect(status != 0)
            #expect(interrupted.output.contains("interrupted by SIGINT"), "\(interrupted.output)")
            #expect(interrupted.output.contains("transferred"), "no progress shown: \(interrupted.output)")
            #expect(try h.configText(vmid) == cfgBefore)
            #expect(h.storageFiles() == filesBefore, "the interrupted move left volumes behind")
            #expect(try await Self.nodes(h, vmid) == ["drive-scsi0", "drive-scsi0-file"])
            try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid))

            // 1. dir raw → btrfs, live.
            let beforeMove1 = h.lastHeartbeat(vmid)
            let out1 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "bt"])
            let hbMove1 = h.lastHeartbeat(vmid)
            #expect(out1.contains("ready"), "\(out1)")
            var c = try h.config(vmid)
            let btVolume = try #require(c.disk("scsi0")?.volid)
            #expect(btVolume.hasPrefix("bt:"))
            #expect(c.disk("scsi0")?.size == "128M")
            #expect(c.unused[0] == locVolume)
            #expect(try await Self.nodes(h, vmid) == ["drive-scsi0-move1", "drive-scsi0-move1-file"])
            #expect(try await Self.activeNode(h, vmid) == "drive-scsi0-move1")
            try await h.waitForHeartbeat(vmid, above: hbMove1)
            // The source, no longer open in QEMU, holds every record up to the pivot.
            let locCheck = try h.checkRecords(locPath, format: "raw", checker: guest.checker)
            #expect(locCheck.consistent, "\(locCheck.output)")
            #expect(locCheck.lastContiguous >= beforeMove1, "\(locCheck.output)")

            // 2. btrfs → zfspool (no O_DIRECT on zfs-fuse), live.
            try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "zp"])
            let hbMove2 = h.lastHeartbeat(vmid)
            c = try h.config(vmid)
            let zpVolume = try #require(c.disk("scsi0")?.volid)
            #expect(zpVolume.hasPrefix("zp:"))
            #expect(c.unused[1] == btVolume)
            #expect(try await Self.nodes(h, vmid) == ["drive-scsi0", "drive-scsi0-file"])
            try await h.waitForHeartbeat(vmid, above: hbMove2)

            // 3. zfspool → dir qcow2, live, deleting the source.
            let zpPath = try h.volumePath(zpVolume)
            let out3 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "qc", "--format", "qcow2", "--delete"])
            #expect(out3.contains("old volume deleted"), "\(out3)")
            c = try h.config(vmid)
            let qcVolume = try #require(c.disk("scsi0")?.volid)
            #expect(qcVolume.hasPrefix("qc:") && qcVolume.hasSuffix(".qcow2"))
            #expect(!c.unused.values.contains(zpVolume))
            #expect(!FileSystem.exists(zpPath))
            #expect(try await Self.nodes(h, vmid) == ["drive-scsi0-move1", "drive-scsi0-move1-file"])
            try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid))

            // Shut down: all records on the final volume.
            try h.mustRun(["vm", "shutdown", String(vmid), "--timeout", "60"])
            #expect(await h.waitForExit(vmid, pid: pid, timeout: .seconds(10)))
            let last = h.lastHeartbeat(vmid)
            let btCheck = try h.checkRecords(try h.volumePath(btVolume), format: "raw", checker: guest.checker)
            #expect(btCheck.consistent, "\(btCheck.output)")
            #expect(btCheck.lastContiguous >= hbMove1, "\(btCheck.output)")
            let qcCheck = try h.checkRecords(try h.volumePath(qcVolume), format: "qcow2", checker: guest.checker)
            #expect(qcCheck.consistent, "\(qcCheck.output)")
            #expect(qcCheck.lastContiguous == last, "\(qcCheck.output)")

            // 4. Stopped: qcow2 → btrfs raw by copy, deleting the source.
            let qcPath = try h.volumePath(qcVolume)
            let out4 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "bt", "--format", "raw", "--delete"])
            #expect(out4.contains("qemu-img convert"), "\(out4)")
            c = try h.config(vmid)
            let finalVolume = try #require(c.disk("scsi0")?.volid)
            #expect(finalVolume.hasPrefix("bt:") && finalVolume.hasSuffix(".raw") && finalVolume != btVolume)
            #expect(!FileSystem.exists(qcPath))
            let finalCheck = try h.checkRecords(try h.volumePath(finalVolume), format: "raw", checker: guest.checker)
            #expect(finalCheck.consistent, "\(finalCheck.output)")
            #expect(finalCheck.lastContiguous == last, "\(finalCheck.output)")
            #expect(c.unused == [0: locVolume, 1: btVolume])
        }
    }

    /// The guest's disk moves live dir(raw) → rbd → btrfs while its workload
    /// writes: the mirror writes into and reads out of an RBD image through
    /// QEMU's librbd driver. Records are checked on every volume.
    @Test("move-disk live to and from rbd while the workload writes")
    func moveDiskToAndFromRBD() async throws {
        guard Integration.available("SNAPDUMP_TEST_DIR", "SNAPDUMP_TEST_BTRFS", "SNAPDUMP_TEST_CEPH_CONF") else { return }
        try QEMU.require()
        let guest = try await TestGuest.outputs()
        let vmid = 933
        try await GuestHarness.run("move-rbd") { h in
            try h.addStorage("loc", .dirRaw)
            try h.addStorage("ceph", .rbd)
            try h.addStorage("bt", .btrfs)
            try h.createGuest(vmid, storage: "loc", size: "128M", guest: guest)
            let locVolume = try #require(try h.config(vmid).disk("scsi0")?.volid)
            let locPath = try h.volumePath(locVolume)
            try Self.fill(locPath, from: 32 << 20, count: 32 << 20)
            try await h.startAndWaitForHeartbeats(vmid)
            let pid = try #require(h.pid(vmid))

            // 1. dir raw → rbd, live.
            let before1 = h.lastHeartbeat(vmid)
            try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "ceph"])
            let hb1 = h.lastHeartbeat(vmid)
            var c = try h.config(vmid)
            let rbdVolume = try #require(c.disk("scsi0")?.volid)
            #expect(rbdVolume == "ceph:vm-\(vmid)-disk-0")
            #expect(c.unused[0] == locVolume)
            let cmd = try FileSystem.readText("/proc/\(pid)/cmdline")
            #expect(!cmd.contains("driver=rbd"), "the guest was started on dir, not rbd")
            try await h.waitForHeartbeat(vmid, above: hb1)
            let locCheck = try h.checkRecords(locPath, format: "raw", checker: guest.checker)
            #expect(locCheck.consistent && locCheck.lastContiguous >= before1, "\(locCheck.output)")

            // 2. rbd → btrfs, live, deleting the RBD image.
            let rbdPath = try h.volumePath(rbdVolume)
            let snapshotOfRBD = try h.checkRecords(rbdPath, format: "raw", checker: guest.checker)
            #expect(snapshotOfRBD.consistent, "records on the rbd image while in use: \(snapshotOfRBD.output)")
            let out2 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "bt", "--delete"])
            #expect(out2.contains("old volume deleted"), "\(out2)")
            c = try h.config(vmid)
            let btVolume = try #require(c.disk("scsi0")?.volid)
            #expect(btVolume.hasPrefix("bt:"))
            #expect(try h.run(["volume", "path", rbdVolume]).status != 0, "the rbd image is still there")
            try await h.waitForHeartbeat(vmid, above: h.lastHeartbeat(vmid))

            // Shut down: every record on the final volume, and the data past the records moved along.
            try h.mustRun(["vm", "shutdown", String(vmid), "--timeout", "60"])
            #expect(await h.waitForExit(vmid, pid: pid, timeout: .seconds(10)))
            let btPath = try h.volumePath(btVolume)
            let final = try h.checkRecords(btPath, format: "raw", checker: guest.checker)
            #expect(final.consistent, "\(final.output)")
            #expect(final.lastContiguous == h.lastHeartbeat(vmid), "\(final.output)")
            #expect(try Self.sameBytes(locPath, btPath, from: 32 << 20, count: 32 << 20), "the data past the records differs after two moves")
        }
    }

    /// Bad input that needs no running QEMU: one clear error, exit ≠ 0, nothing changed.
    @Test("unknown VMID, missing volume, locked VM")
    func badInputWithoutQEMU() async throws {
        try Integration.need("SNAPDUMP_TEST_DIR", "SNAPDUMP_TEST_BTRFS")
        let guest = try await TestGuest.outputs()
        try await GuestHarness.run("bad") { h in
            try h.addStorage("loc", .dirRaw)
            try h.addStorage("bt", .btrfs)
            for args in [["vm", "start", "4242"], ["vm", "destroy", "4242"], ["vm", "shutdown", "4242"],
                         ["vm", "move-disk", "4242", "scsi0", "bt"], ["vm", "status", "4242"]] {
                try h.expectRefused(args, vmid: nil, mentioning: ["4242", "does not exist"])
            }

            // A config naming a volume that is gone: start fails naming it, starts nothing.
            try h.createGuest(933, storage: "loc", guest: guest)
            let volid = try #require(try h.config(933).disk("scsi0")?.volid)
            try FileSystem.remove(try h.volumePath(volid))
            try h.expectRefused(["vm", "start", "933"], vmid: 933, mentioning: ["933", volid])
            #expect(h.pid(933) == nil)
            #expect(!FileSystem.exists(h.paths.pidFile(933)))
            try h.expectRefused(["vm", "move-disk", "933", "scsi0", "bt"], vmid: 933, mentioning: [volid])
            #expect(h.storageFiles().isEmpty)

            // A locked VM: move-disk and start refuse, naming the lock.
            try h.createGuest(934, storage: "loc", guest: guest)
            var text = try h.configText(934)
            text += "lock: backup\n"
            try FileSystem.writeAtomically(h.paths.vmConfig(934), text)
            let files = h.storageFiles()
            try h.expectRefused(["vm", "move-disk", "934", "scsi0", "bt"], vmid: 934, mentioning: ["VM 934", "locked", "backup"])
            try h.expectRefused(["vm", "start", "934"], vmid: 934, mentioning: ["locked", "backup"])
            #expect(h.storageFiles() == files)
        }
    }

    // MARK: Helpers

    /// Named block nodes of the running VM, sorted.
    static func nodes(_ h: GuestHarness, _ vmid: Int) async throws -> [String] {
        // QEMU serves one QMP client at a time: close before the next command.
        let qmp = try await QMPClient.connect(path: h.paths.qmpSocket(vmid), timeout: .seconds(5))
        let names = await asyncResult { try await DriveNodes.names(qmp: qmp).sorted() }
        await qmp.close()
        return try names.get()
    }

    /// The node scsi0's device uses now.
    static func activeNode(_ h: GuestHarness, _ vmid: Int) async throws -> String? {
        let qmp = try await QMPClient.connect(path: h.paths.qmpSocket(vmid), timeout: .seconds(5))
        let node = await asyncResult { try await DriveNodes.formatNode(key: "scsi0", qmp: qmp) }
        await qmp.close()
        return try node.get()
    }

    /// Writes a non-zero pattern over `count` bytes from `offset`.
    static func fill(_ path: String, from offset: Int, count: Int) throws {
        let f = try File.open(path, O_WRONLY)
        let chunk = [UInt8](repeating: 0xA5, count: 1 << 20)
        var at = offset
        while at < offset + count {
            try chunk.withUnsafeBytes { try f.write($0, at: UInt64(at)) }
            at += chunk.count
        }
        try f.sync()
        try f.close()
    }

    /// Whether two files hold the same bytes in `offset..<offset+count`.
    static func sameBytes(_ a: String, _ b: String, from offset: Int, count: Int) throws -> Bool {
        let fa = try File.openForReading(a), fb = try File.openForReading(b)
        defer { try? fa.close(); try? fb.close() }
        let ba = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        let bb = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { ba.deallocate(); bb.deallocate() }
        var at = offset
        while at < offset + count {
            let n = min(1 << 20, offset + count - at)
            let ra = try fa.read(into: UnsafeMutableRawBufferPointer(rebasing: ba[0..<n]), at: UInt64(at))
            let rb = try fb.read(into: UnsafeMutableRawBufferPointer(rebasing: bb[0..<n]), at: UInt64(at))
            guard ra == n, rb == n, memcmp(ba.baseAddress!, bb.baseAddress!, n) == 0 else { return false }
            at += n
        }
        return true
    }
}
