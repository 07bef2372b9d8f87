#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// The project's test guest (scripts/test-guest): kernel, busybox initramfs,
/// qemu-ga and a disk-writing workload.
enum TestGuest {
    static var enabled: Bool {
        guard QEMU.enabled else { return false }
        return Integration.required || TestGuestImage.obtainable
    }

    /// (kernel, initrd, checker), built when the builder is in the repository (`TestGuestImage`).
    static func outputs() async throws -> (kernel: String, initrd: String, checker: String) {
        let f = try await TestGuestImage.files()
        return (f.kernel, f.initrd, f.checker)
    }
}

@Suite("Test guest under snapdump's lifecycle", .enabled(if: TestGuest.enabled))
struct TestGuestBootTests {
    func waitForConsole(_ path: String, _ prefix: String, timeout: Duration) async throws -> String {
        try await Console.waitForLine(path, prefix, timeout: timeout)
    }

    func heartbeats(_ path: String) -> [Int] {
        Heartbeats.parse((try? FileSystem.readText(path)) ?? "")
    }

    @Test func bootsAgentAnswersAndACPIShutdownStopsIt() async throws {
        try QEMU.require()
        let guest = try await TestGuest.outputs()
        try await VMFixture("guest", vmid: 101) { c in
            c.memory = 256
            c.kernel = guest.kernel
            c.initrd = guest.initrd
            c.append = "console=ttyS0 quiet panic=-1 snapdump.interval_ms=10"
            c.agent = try PropertyString.parse("1", defaultKey: "enabled", what: "agent")
            c.setDisk(VMDisk(key: "scsi0", volid: "local:101/vm-101-disk-0.raw", options: try PropertyString.parse("size=64M", what: "scsi0")))
        }.run { f in
            let disk = f.dir + "/vm-101-disk-0.raw"
            let img = try File.open(disk, O_WRONLY | O_CREAT, mode: 0o644)
            try img.truncate(to: 64 << 20)
            try img.close()
            let l = f.lifecycle
            let console = f.paths.consoleLog(101)

            _ = try await l.start(vmid: 101, disks: [ResolvedDisk(key: "scsi0", path: disk, format: "raw")])
            let ready = try await waitForConsole(console, "SNAPDUMP-GUEST READY", timeout: .seconds(90))
            #expect(ready.contains("disk=/dev/sda"))
            #expect(ready.contains("agent=/dev/vport"))  // vport0p1 or vport1p1, by PCI order

            // The real qemu-ga answers through snapdump's agent client.
            let agent = l.guestAgent(vmid: 101)
            var pinged = false
            for _ in 0..<10 where !pinged {
                do {
                    try await agent.ping()
                    pinged = true
                } catch {
                    try await Task.sleep(for: .milliseconds(500))
                }
            }
            #expect(pinged)
            #expect(try await agent.fsfreezeStatus() == .thawed)
            await agent.close()

            // Heartbeats flow; suspend stops them, resume lets them continue.
            _ = try await waitForConsole(console, "HB ", timeout: .seconds(30))
            try await l.suspend(vmid: 101)
            try await Task.sleep(for: .milliseconds(300))
            let paused = heartbeats(console).last ?? 0
            try await Task.sleep(for: .milliseconds(700))
            #expect((heartbeats(console).last ?? 0) == paused)
            try await l.resume(vmid: 101)
            let deadline = ContinuousClock.now + .seconds(20)
            while (heartbeats(console).last ?? 0) <= paused && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect((heartbeats(console).last ?? 0) > paused)

            // ACPI powerdown: the guest's acpid powers off and QEMU exits.
            try await l.shutdown(vmid: 101, timeout: .seconds(30), forceStop: false)
            #expect(try await l.status(vmid: 101).state == .stopped)
            let text = try FileSystem.readText(console)
            #expect(text.contains("WORKLOAD STOP"))
            #expect(text.contains("SNAPDUMP-GUEST POWERDOWN"))

            // After a clean poweroff every heartbeat's record is on the disk.
            if FileSystem.exists(guest.checker) {
                let out = try Command.capture([guest.checker, disk])
                #expect(out.status == 0, "\(out.stdout)")
                #expect(out.stdout.contains("status=consistent"))
                let last = heartbeats(console).last ?? -1
                #expect(out.stdout.contains("last_contiguous=\(last)\n"), "\(out.stdout)")
            }
        }
    }
}
