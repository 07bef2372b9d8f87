#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Guest

/// A config dir in /tmp with one VM; kills the VM's QEMU (verified pid) on teardown.
struct VMFixture {
    let dir: String
    let paths: SnapdumpPaths
    let lifecycle: VMLifecycle
    let vmid: Int

    init(_ label: String, vmid: Int = 100, config: (inout VMConfig) throws -> Void = { _ in }) throws {
        dir = try scratch(label)
        paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        lifecycle = VMLifecycle(paths: paths)
        self.vmid = vmid
        var c = VMConfig(vmid: vmid)
        c.name = "test\(vmid)"
        c.memory = 64
        try config(&c)
        try c.save(paths: paths)
    }

    /// Kills whatever QEMU still runs for the VM and removes the directory.
    func tearDown() async {
        if let pid = lifecycle.runningPID(vmid) {
            ProcessTable.signal(pid, SIGKILL, ifMentioning: paths.qmpSocket(vmid))
            _ = await ProcessTable.waitForExit(pid, mentioning: paths.qmpSocket(vmid), timeout: .seconds(10))
        }
        removeTree(dir)
    }

    func run(_ body: (VMFixture) async throws -> Void) async throws {
        do {
            try await body(self)
        } catch {
            await tearDown()
            throw error
        }
        await tearDown()
    }
}

@Suite("VM lifecycle without QEMU")
struct VMLifecycleUnitTests {
    @Test func lockedVMRefusesEverythingButStatusAndUnlock() async throws {
        try await VMFixture("lock") { $0.lock = "backup" }.run { f in
            let l = f.lifecycle
            for (name, op) in [
                ("start", { _ = try await l.start(vmid: 100, disks: []) }),
                ("suspend", { try await l.suspend(vmid: 100) }),
                ("resume", { try await l.resume(vmid: 100) }),
                ("stop", { try await l.stop(vmid: 100) }),
                ("shutdown", { try await l.shutdown(vmid: 100, timeout: .seconds(1), forceStop: true) }),
                ("lock", { try await l.lock(vmid: 100, "migrate") }),
            ] as [(String, () async throws -> Void)] {
                let e = await expectError(GuestError.self, op)
                #expect(e?.code == .locked, "\(name)")
                #expect(e?.description == "VM 100 is locked (backup)", "\(name)")
            }
            let s = try await l.status(vmid: 100)
            #expect(s.state == .stopped && s.lock == "backup" && s.name == "test100")
            // The lock's holder may proceed.
            try await l.stop(vmid: 100, allowLock: "backup")
            try await l.unlock(vmid: 100)
            #expect(try VMConfig.load(vmid: 100, paths: f.paths).lock == nil)
            try await l.unlock(vmid: 100)
            try await l.lock(vmid: 100, "backup")
            #expect(try VMConfig.load(vmid: 100, paths: f.paths).lock == "backup")
        }
    }

    @Test func unknownVMAndNotRunning() async throws {
        try await VMFixture("unknown").run { f in
            let e = await expectError(GuestError.self) { try await f.lifecycle.start(vmid: 555, disks: []) }
            #expect(e?.code == .notFound)
            #expect(e?.message.hasPrefix("VM 555 does not exist") == true)
            let e2 = await expectError(GuestError.self) { try await f.lifecycle.suspend(vmid: 100) }
            #expect(e2?.code == .notRunning)
            #expect(e2?.description == "VM 100 is not running")
            // stop and shutdown of a stopped VM are fine.
            try await f.lifecycle.stop(vmid: 100)
            try await f.lifecycle.shutdown(vmid: 100, timeout: .seconds(1))
        }
    }

    @Test func missingKernelOrDiskIsReportedBeforeStarting() async throws {
        try await VMFixture("missing") { $0.kernel = "/nonexistent/vmlinuz" }.run { f in
            let e = await expectError(GuestError.self) { try await f.lifecycle.start(vmid: 100, disks: []) }
            #expect(e?.code == .missingFile)
            #expect(e?.message == "VM 100: kernel '/nonexistent/vmlinuz' does not exist")
        }
        try await VMFixture("missing") { $0.setDisk(VMDisk(key: "scsi0", volid: "local:100/vm-100-disk-0.raw")) }.run { f in
            let e = await expectError(GuestError.self) {
                try await f.lifecycle.start(vmid: 100, disks: [ResolvedDisk(key: "scsi0", path: f.dir + "/nope.raw")])
            }
            #expect(e?.code == .missingFile)
        }
    }

    @Test func staleFilesAreCleanedUp() async throws {
        try await VMFixture("stale").run { f in
            try FileSystem.createDirectory(f.paths.qemuRunDir)
            // A pidfile naming a live process that is not this VM's QEMU (ourselves).
            try FileSystem.writeAtomically(f.paths.pidFile(100), "\(getpid())\n")
            try FileSystem.writeAtomically(f.paths.qmpSocket(100), "")
            try FileSystem.writeAtomically(f.paths.guestAgentSocket(100), "")
            #expect(f.lifecycle.runningPID(100) == nil)
            #expect(try await f.lifecycle.status(vmid: 100).state == .stopped)
            #expect(try f.lifecycle.cleanupStale(vmid: 100))
            #expect(!FileSystem.exists(f.paths.pidFile(100)) && !FileSystem.exists(f.paths.qmpSocket(100)))
            #expect(try f.lifecycle.cleanupStale(vmid: 100) == false)
            // Our own process survived (never signalled).
            #expect(kill(getpid(), 0) == 0)
        }
    }
}

/// Real QEMU, no guest disk and no kernel: the VM sits in SeaBIOS, which is
/// enough for start / status / suspend / resume / stop; it ignores ACPI
/// powerdown, so shutdown needs --force-stop.
@Suite("VM lifecycle with a real QEMU", .enabled(if: QEMU.enabled))
struct VMLifecycleQEMUTests {
    @Test func startSuspendResumeShutdown() async throws {
        try QEMU.require()
        try await VMFixture("life").run { f in
            let l = f.lifecycle
            #expect(try await l.status(vmid: 100).state == .stopped)

            let pid = try await l.start(vmid: 100, disks: [])
            var s = try await l.status(vmid: 100)
            #expect(s.state == .running && s.qmpStatus == "running" && s.pid == pid)
            #expect((s.uptime ?? -1) >= 0 && (s.uptime ?? 99) < 60)
            #expect(FileSystem.exists(f.paths.consoleLog(100)))
            #expect(ProcessTable.commandLine(pid)?.contains("-daemonize") == true)

            let again = await expectError(GuestError.self) { try await l.start(vmid: 100, disks: []) }
            #expect(again?.code == .alreadyRunning)
            #expect(again?.message == "VM 100 is already running (pid \(pid))")

            try await l.suspend(vmid: 100)
            s = try await l.status(vmid: 100)
            #expect(s.state == .paused && s.qmpStatus == "paused")
            try await l.resume(vmid: 100)
            #expect(try await l.status(vmid: 100).state == .running)

            // A lock stops lifecycle commands even while running.
            try await l.lock(vmid: 100, "backup")
            let locked = await expectError(GuestError.self) { try await l.suspend(vmid: 100) }
            #expect(locked?.description == "VM 100 is locked (backup)")
            #expect(try await l.status(vmid: 100).state == .running)
            try await l.unlock(vmid: 100)

            // SeaBIOS ignores ACPI: without force-stop, a timeout and the VM still runs.
            let (timeout, waited) = await timed {
                await expectError(GuestError.self) { try await l.shutdown(vmid: 100, timeout: .seconds(1), forceStop: false) }
            }
            #expect(timeout?.code == .timeout)
            #expect(timeout?.message == "VM 100 did not shut down within 1 s")
            #expect(waited < .seconds(5))
            #expect(l.runningPID(100) == pid)

            try await l.shutdown(vmid: 100, timeout: .seconds(1), forceStop: true)
            #expect(l.runningPID(100) == nil)
            #expect(ProcessTable.commandLine(pid) == nil || ProcessTable.isAlive(pid, mentioning: f.paths.qmpSocket(100)) == false)
            #expect(try await l.status(vmid: 100).state == .stopped)
            #expect(!FileSystem.exists(f.paths.qmpSocket(100)) && !FileSystem.exists(f.paths.pidFile(100)))
        }
    }

    /// A backup may hold QEMU's main monitor for its whole run (fleecing's
    /// watch): `status` asks the second, status-only monitor and answers at
    /// once with the true state, which the holder may have changed.
    @Test func statusAnswersAtOnceWhileTheMonitorIsHeld() async throws {
        try QEMU.require()
        try await VMFixture("status-held").run { f in
            let l = f.lifecycle
            _ = try await l.start(vmid: 100, disks: [])
            #expect(FileSystem.exists(f.paths.qmpStatusSocket(100)))
            let held = try await l.connectQMP(vmid: 100)
            let (running, t1) = await timed { try? await l.status(vmid: 100) }
            #expect(running?.state == .running && running?.qmpStatus == "running", "\(String(describing: running))")
            #expect(t1 < .seconds(1), "status took \(t1) while the main monitor was held")
            _ = try await held.execute("stop")
            let (paused, t2) = await timed { try? await l.status(vmid: 100) }
            #expect(paused?.state == .paused && paused?.qmpStatus == "paused", "\(String(describing: paused))")
            #expect(t2 < .seconds(1), "status took \(t2) while the main monitor was held")
            _ = try await held.execute("cont")
            await held.close()
            try await l.stop(vmid: 100)
            #expect(!FileSystem.exists(f.paths.qmpStatusSocket(100)) && !FileSystem.exists(f.paths.qmpSocket(100)))
        }
    }

    /// Disks, agent socket, stop: QEMU accepts the generated -blockdev /
    /// -device arguments, the node names are there for block jobs, a silent
    /// agent (no guest OS) is reported within 3 s, and stop ends QEMU.
    @Test func disksAgentAndStop() async throws {
        try QEMU.require()
        var diskPaths: [String] = []
        try await VMFixture("disks") { c in
            c.setDisk(VMDisk(key: "scsi0", volid: "local:100/vm-100-disk-0.raw"))
            c.setDisk(VMDisk(key: "virtio1", volid: "local:100/vm-100-disk-1.qcow2"))
            c.agent = try PropertyString.parse("1", defaultKey: "enabled", what: "agent")
        }.run { f in
            let raw = f.dir + "/disk0.raw"
            let qcow = f.dir + "/disk1.qcow2"
            let img = try File.open(raw, O_WRONLY | O_CREAT, mode: 0o644)
            try img.truncate(to: 16 << 20)
            try img.close()
            try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "16M"])
            diskPaths = [raw, qcow]
            let l = f.lifecycle
            let pid = try await l.start(vmid: 100, disks: [ResolvedDisk(key: "scsi0", path: raw, format: "raw"),
                                                          ResolvedDisk(key: "virtio1", path: qcow, format: "qcow2")])
            let qmp = try await l.connectQMP(vmid: 100)
            let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": true])
            let names = Set(nodes.arrayValue?.compactMap { $0["node-name"]?.stringValue } ?? [])
            #expect(names.isSuperset(of: ["drive-scsi0", "drive-scsi0-file", "drive-virtio1", "drive-virtio1-file"]))
            let scsiFile = nodes.arrayValue?.first { $0["node-name"] == "drive-scsi0-file" }
            #expect(scsiFile?["cache"]?["direct"] == .bool(QEMUCommandLine.supportsDirectIO(raw)))
            await qmp.close()

            #expect(FileSystem.exists(f.paths.guestAgentSocket(100)))
            let agent = l.guestAgent(vmid: 100)
            let (e, elapsed) = await timed { await expectError(GuestAgentError.self) { try await agent.ping() } }
            if case .timeout? = e {} else { Issue.record("expected a timeout, got \(String(describing: e))") }
            #expect(elapsed <= .milliseconds(3500))
            await agent.close()

            try await l.stop(vmid: 100)
            #expect(l.runningPID(100) == nil)
            #expect(!ProcessTable.isAlive(pid, mentioning: f.paths.qmpSocket(100)))
            #expect(!FileSystem.exists(f.paths.guestAgentSocket(100)))
        }
        #expect(diskPaths.count == 2)
    }
}
