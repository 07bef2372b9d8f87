import Foundation
import Testing
import SnapdumpSystem
@testable import Guest

/// QMPClient against a real QEMU (no guest: `-S`, the CPUs never run).
@Suite("QMPClient with a real QEMU", .enabled(if: QEMU.enabled))
struct QMPRealQEMUTests {
    @Test func statusStopContAndQuit() async throws {
        try QEMU.require()
        let dir = try scratch("qmp")
        defer { removeTree(dir) }
        let socket = dir + "/qmp.sock"
        try await withQEMU(["-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
                            "-qmp", "unix:\(socket),server=on,wait=off", "-S"]) { qemu in
            let qmp = try await connectQMP(socket)
            let version = await qmp.greeting?.qemuVersion
            #expect(version != nil)

            #expect(try await qmp.execute("query-status")["status"] == "prelaunch")

            var mark = await qmp.eventMark
            _ = try await qmp.execute("cont")
            _ = try await qmp.waitForEvent("RESUME", after: mark, timeout: .seconds(5))
            #expect(try await qmp.execute("query-status")["status"] == "running")

            mark = await qmp.eventMark
            _ = try await qmp.execute("stop")
            let stop = try await qmp.waitForEvent("STOP", after: mark, timeout: .seconds(5))
            #expect(stop.timestamp != nil)
            let status = try await qmp.execute("query-status")
            #expect(status["status"] == "paused")
            #expect(status["running"] == false)

            // A refused command: QEMU's class and text.
            let e = await expectError(QMPError.self) { try await qmp.execute("no-such-command") }
            guard case .commandFailed(let cls, let desc)? = e else {
                Issue.record("expected commandFailed, got \(String(describing: e))")
                return
            }
            #expect(cls == "CommandNotFound")
            #expect(desc.contains("no-such-command"))
            let e2 = await expectError(QMPError.self) { try await qmp.execute("query-block-jobs", arguments: ["bogus": 1]) }
            if case .commandFailed(let cls2, _)? = e2 { #expect(cls2 == "GenericError") } else { Issue.record("\(String(describing: e2))") }

            // Several commands in flight at once.
            async let a = qmp.execute("query-name")
            async let b = qmp.execute("query-kvm")
            async let c = qmp.execute("query-status")
            let (ra, rb, rc) = try await (a, b, c)
            #expect(ra.objectValue != nil && rb["present"] != nil && rc["status"] == "paused")

            mark = await qmp.eventMark
            _ = try await qmp.execute("quit")
            let shutdown = try await qmp.waitForEvent("SHUTDOWN", after: mark, timeout: .seconds(5))
            #expect(shutdown.data["reason"] == "host-qmp-quit")
            #expect(await qemu.waitForExit(timeout: .seconds(10)))
            // QEMU is gone: the client notices and fails fast.
            let e3 = await expectError(QMPError.self) { try await qmp.execute("query-status", timeout: .seconds(5)) }
            #expect(e3 == .connectionClosed)
        }
    }

    @Test func killedQEMUFailsThePendingCommand() async throws {
        try QEMU.require()
        let dir = try scratch("qmp")
        defer { removeTree(dir) }
        let socket = dir + "/qmp.sock"
        try await withQEMU(["-machine", "none", "-accel", "tcg", "-nodefaults", "-display", "none",
                            "-qmp", "unix:\(socket),server=on,wait=off", "-S"]) { qemu in
            let qmp = try await connectQMP(socket)
            // SIGSTOP makes QEMU silent; the command is pending when it dies.
            kill(qemu.pid, SIGSTOP)
            let pending = Task { try await qmp.execute("query-status", timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(200))
            await qemu.kill()
            let (e, elapsed) = await timed { await expectError(QMPError.self) { try await pending.value } }
            #expect(e == .connectionClosed)
            #expect(elapsed < .seconds(5))
        }
    }

    @Test func missingSocketIsUnavailable() async throws {
        let e = await expectError(QMPError.self) { try await QMPClient.connect(path: "/tmp/snapdump-no-such-dir/100.qmp", timeout: .seconds(1)) }
        guard case .unavailable(let detail)? = e else {
            Issue.record("expected unavailable, got \(String(describing: e))")
            return
        }
        #expect(detail.contains("No such file"))
    }
}
