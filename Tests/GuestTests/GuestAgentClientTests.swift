import Foundation
import Testing
@testable import Guest

@Suite("GuestAgentClient with a fake agent")
struct GuestAgentClientTests {
    @Test func answeringAgent() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        let agent = try FakeAgent(path: dir + "/100.qga", mode: .answers)
        defer { agent.stop() }
        let client = GuestAgentClient(socketPath: agent.path)
        try await client.ping()
        #expect(try await client.fsfreezeStatus() == .thawed)
        #expect(try await client.fsfreezeFreeze() == 2)
        #expect(try await client.fsfreezeStatus() == .frozen)
        #expect(try await client.fsfreezeThaw() == 2)
        #expect(try await client.fsfreezeStatus() == .thawed)
        // One sync per connection, then the commands.
        #expect(agent.recordedCommands == ["guest-sync-delimited", "guest-ping", "guest-fsfreeze-status", "guest-fsfreeze-freeze",
                                           "guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-fsfreeze-status"])
        await client.close()
    }

    @Test func refusedCommandKeepsTheConnection() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        let agent = try FakeAgent(path: dir + "/100.qga", mode: .answers)
        defer { agent.stop() }
        let client = GuestAgentClient(socketPath: agent.path)
        let e = await expectError(GuestAgentError.self) { try await client.execute("guest-nonsense", timeout: .seconds(3)) }
        #expect(e == .commandFailed(class: "CommandNotFound", desc: "The command guest-nonsense has not been found"))
        try await client.ping()
        #expect(agent.recordedCommands.filter { $0 == "guest-sync-delimited" }.count == 1)
        await client.close()
    }

    @Test func silentAgentIsReportedWithinThreeSeconds() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        let agent = try FakeAgent(path: dir + "/100.qga", mode: .silent)
        defer { agent.stop() }
        let client = GuestAgentClient(socketPath: agent.path)
        let (e, elapsed) = await timed { await expectError(GuestAgentError.self) { try await client.ping() } }
        guard case .timeout(let command, _) = e else {
            Issue.record("expected timeout, got \(String(describing: e))")
            return
        }
        #expect(command == "guest-ping")
        #expect(elapsed <= .milliseconds(3500))
        // A freeze with a long timeout still gives up after the 3 s sync.
        let (e2, elapsed2) = await timed { await expectError(GuestAgentError.self) { try await client.fsfreezeFreeze(timeout: .seconds(60)) } }
        guard case .timeout = e2 else {
            Issue.record("expected timeout, got \(String(describing: e2))")
            return
        }
        #expect(elapsed2 <= .milliseconds(3500))
    }

    @Test func closingAgentIsConnectionClosed() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        let agent = try FakeAgent(path: dir + "/100.qga", mode: .closes)
        defer { agent.stop() }
        let client = GuestAgentClient(socketPath: agent.path)
        let (e, elapsed) = await timed { await expectError(GuestAgentError.self) { try await client.ping() } }
        #expect(e == .connectionClosed)
        #expect(elapsed < .seconds(2))
    }

    @Test func missingSocketFailsAtOnce() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        let client = GuestAgentClient(socketPath: dir + "/absent.qga")
        let (e, elapsed) = await timed { await expectError(GuestAgentError.self) { try await client.ping() } }
        guard case .unavailable(let path, let reason) = e else {
            Issue.record("expected unavailable, got \(String(describing: e))")
            return
        }
        #expect(path == dir + "/absent.qga")
        #expect(reason.contains("No such file"))
        #expect(elapsed < .seconds(1))
    }

    @Test func agentRestartIsSurvived() async throws {
        let dir = try scratch("qga")
        defer { removeTree(dir) }
        var agent = try FakeAgent(path: dir + "/100.qga", mode: .answers)
        let client = GuestAgentClient(socketPath: agent.path)
        try await client.ping()
        agent.stop()
        try await Task.sleep(for: .milliseconds(100))
        agent = try FakeAgent(path: dir + "/100.qga", mode: .answers)
        defer { agent.stop() }
        // The first call notices the dropped connection; the next reconnects and syncs.
        do { try await client.ping() } catch {}
        try await client.ping()
        await client.close()
    }
}
