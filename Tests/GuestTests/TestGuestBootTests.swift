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
    static var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }
    static var buildScript: String { repositoryRoot + "/scripts/test-guest/build.sh" }
    /// SNAPDUMP_GUEST_DIR: where build.sh puts (or has put) its outputs.
    static var outputDirectory: String? { Integration.fixture("SNAPDUMP_GUEST_DIR") }

    static var enabled: Bool {
        guard QEMU.enabled else { return false }
        if Integration.required || FileSystem.exists(buildScript) { return true }
        return outputDirectory.map { FileSystem.exists($0 + "/vmlinuz") } ?? false
    }

    /// (kernel, initrd, checker) — builds them when the builder is in the
    /// repository (idempotent, fast when up to date).
    static func outputs() async throws -> (kernel: String, initrd: String, checker: String) {
        let dir: String
        if FileSystem.exists(buildScript) {
            dir = outputDirectory ?? repositoryRoot + "/scripts/test-guest/out"
            let script = buildScript
            _ = try await Blocking.run("build-test-guest") { try Command.run([script, dir]) }
        } else if let d = outputDirectory {
            dir = d
        } else {
            throw TestFailure("test guest missing: no \(buildScript) and no SNAPDUMP_GUEST_DIR")
        }
        let r = (dir + "/vmlinuz", dir + "/initramfs.gz", dir + "/snapdump-record-check")
        for f in [r.0, r.1] where !FileSystem.exists(f) { throw TestFailure("test guest: \(f) missing") }
        return r
    }
}

@Suite("Test guest under snapdump's lifecycle", .enabled(if: TestGuest.enabled))
struct TestGuestBootTests {
    func waitForConsole(_ path: String, _ prefix: String, timeout: Duration) async throws -> String {
        try await Console.waitForLine(path, prefix, timeout: timeout)
    }

    func heartbeats(_ path: String) -> [Int] {
        let text = (try? FileSystem.readText(path)) ?? ""
        // Lines end in "\r\n" (one Character in Swift). Skip a last line
        // without its newline: it may be cut short.
        var lines = text.split(whereSeparator: \.isNewline)
        if let last = text.last, !last.isNewline, !lines.isEmpty { lines.removeLast() }
        return lines.compactMap { l in
            let s = l.trimmingCharacters(in: .whitespacesAndNewlines)
            return s.hasPrefix("HB ") ? Int(s.dropFirst(3)) : nil
        }
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
