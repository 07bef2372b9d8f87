#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// A guest that boots from an RBD image: SeaBIOS loads the boot-sector writer
/// (`BootSectorWriter`) from the image through QEMU's librbd driver — no
/// `-kernel` — and it writes its records to that image with int 13h. Moved
/// live to `dir` and back to `rbd` while it writes; the image it ends on holds
/// a consistent prefix of its records, as far as its console reported.
@Suite("A guest booting from rbd", .enabled(if: QEMU.enabled), .serialized)
struct BootFromRBDTests {
    let layout = BootSectorWriter.Layout(firstSector: 2048, records: 256, sectorsPerRecord: 8)

    /// The highest sequence the writer reported on the console so far.
    func reported(_ h: GuestHarness, _ vmid: Int) -> UInt32 {
        BootSectorWriter.reportedSequence(console: (try? FileSystem.readText(h.consoleLog(vmid))) ?? "") ?? 0
    }

    /// Waits until the writer reported a sequence past `seq` (it writes on).
    func waitForProgress(_ h: GuestHarness, _ vmid: Int, past seq: UInt32, timeout: Duration = .seconds(90)) async throws -> UInt32 {
        let deadline = ContinuousClock.now + timeout
        while true {
            let now = reported(h, vmid)
            if now > seq { return now }
            let text = (try? FileSystem.readText(h.consoleLog(vmid))) ?? ""
            if text.contains("WRITER ERROR") { throw HarnessError("the writer failed: \(text)") }
            if ContinuousClock.now >= deadline { throw HarnessError("the writer reported no sequence past \(seq) in \(timeout): \(text)") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    @Test func bootsFromRBDWritesAndMovesLiveToDirAndBack() async throws {
        guard Integration.available("SNAPDUMP_TEST_DIR", "SNAPDUMP_TEST_CEPH_CONF") else { return }
        try QEMU.require()
        let vmid = 936
        try await GuestHarness.run("boot-rbd") { h in
            try h.addStorage("loc", .dirRaw)
            try h.addStorage("ceph", .rbd)
            try h.must(["vm", "create", String(vmid), "--memory", "32", "--scsi0", "ceph:4M"])
            let rbdVolume = try #require(try h.config(vmid).disk("scsi0")?.volid)
            #expect(rbdVolume == "ceph:vm-\(vmid)-disk-0")
            // The boot sector onto the image, through QEMU's rbd driver (no kernel module here).
            let sector = h.configDir + "/boot-sector.raw"
            let f = try File.open(sector, O_WRONLY | O_CREAT, mode: 0o600)
            try f.writeAll(try BootSectorWriter.image(layout, ticksBetweenWrites: 1, progressEvery: 8))
            try f.close()
            try Command.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", sector, try h.volumePath(rbdVolume)])

            try h.mustRun(["vm", "start", String(vmid)])
            let pid = try #require(h.pid(vmid))
            let cmd = try FileSystem.readText("/proc/\(pid)/cmdline").replacingOccurrences(of: "\0", with: " ")
            #expect(cmd.contains("driver=rbd") && !cmd.contains("-kernel"), "\(cmd)")
            _ = try await Console.waitForLine(h.consoleLog(vmid), "WRITER START", timeout: .seconds(90))
            let s1 = try await waitForProgress(h, vmid, past: 16)

            // rbd → dir, live, while it writes; the image goes.
            let out1 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "loc", "--delete"])
            #expect(out1.contains("old volume deleted"), "\(out1)")
            let dirVolume = try #require(try h.config(vmid).disk("scsi0")?.volid)
            #expect(dirVolume.hasPrefix("loc:"))
            #expect(try h.run(["volume", "path", rbdVolume]).status != 0, "the rbd image is still there")
            let s2 = try await waitForProgress(h, vmid, past: s1 + 16)

            // dir → rbd, live, while it writes; the file goes.
            let out2 = try h.mustRun(["vm", "move-disk", String(vmid), "scsi0", "ceph", "--delete"])
            #expect(out2.contains("old volume deleted"), "\(out2)")
            let back = try #require(try h.config(vmid).disk("scsi0")?.volid)
            #expect(back == "ceph:vm-\(vmid)-disk-0", "\(back)")
            #expect(try h.run(["volume", "path", dirVolume]).status != 0, "the dir file is still there")
            _ = try await waitForProgress(h, vmid, past: s2 + 16)
            #expect(h.pid(vmid) == pid, "the guest was restarted, not moved live")

            // A hard stop: the image holds every record up to some N at least as far as the console reported.
            try h.mustRun(["vm", "stop", String(vmid)])
            let last = reported(h, vmid)
            let raw = h.configDir + "/final.raw"
            try Command.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", try h.volumePath(back), raw])
            let r = try BootSectorWriter.check(path: raw, layout)
            print("[boot from rbd] moved at sequences \(s1), \(s2); console \(last), image \(r)")
            #expect(r.lastSequence >= last && r.lastSequence <= last + 8, "\(r), console \(last)")
            let text = try FileSystem.readText(h.consoleLog(vmid))
            #expect(!text.contains("WRITER ERROR"), "\(text)")
        }
    }
}
