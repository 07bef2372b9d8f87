import Foundation
import Testing
@testable import Guest

/// QMPClient against a scripted fake QMP server over a socketpair.
@Suite("QMPClient with a fake server")
struct QMPClientFakeTests {
    static let greeting = #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"# + "\r\n"

    /// Connects a client to a fake that sends the greeting and accepts capabilities.
    func connected(timeout: Duration = .seconds(5)) async throws -> (QMPClient, FakePeer) {
        let (a, b) = try makeSocketPair()
        let fake = FakePeer(fd: b)
        async let client = QMPClient.connect(adoptingSocket: a, label: "fake", timeout: timeout)
        await fake.send(Self.greeting)
        let caps = try await fake.readRequest()
        #expect(caps["execute"] == "qmp_capabilities")
        let id = try #require(caps["id"])
        await fake.send(#"{"return": {}, "id": \#(id.encoded())}"# + "\r\n")
        return (try await client, fake)
    }

    @Test func greetingAndCapabilities() async throws {
        let (client, fake) = try await connected()
        let g = await client.greeting
        #expect(g?.qemuVersion == "7.2.0")
        #expect(g?.capabilities == ["oob"])
        #expect(await client.isConnected)
        await client.close()
        await fake.close()
    }

    @Test func outOfOrderRepliesAndAnEventBetween() async throws {
        let (client, fake) = try await connected()
        let mark = await client.eventMark
        let status = Task { try await client.execute("query-status") }
        let name = Task { try await client.execute("query-name") }
        var ids: [String: JSONValue] = [:]
        for _ in 0..<2 {
            let r = try await fake.readRequest()
            ids[r["execute"]!.stringValue!] = r["id"]!
        }
        // Second request answered first, an event in between, then the first.
        await fake.send(#"{"return": {"name": "vm100"}, "id": \#(ids["query-name"]!.encoded())}"# + "\r\n")
        await fake.send(#"{"timestamp": {"seconds": 1700000000, "microseconds": 250000}, "event": "STOP"}"# + "\r\n")
        await fake.send(#"{"return": {"status": "paused", "running": false}, "id": \#(ids["query-status"]!.encoded())}"# + "\r\n")
        #expect(try await name.value["name"] == "vm100")
        #expect(try await status.value["status"] == "paused")
        let event = try await client.waitForEvent("STOP", after: mark, timeout: .seconds(2))
        #expect(event.timestamp == 1_700_000_000.25)
        await client.close()
        await fake.close()
    }

    @Test func commandFailedCarriesClassAndText() async throws {
        let (client, fake) = try await connected()
        let r = Task { try await client.execute("bogus", arguments: ["x": 1]) }
        let req = try await fake.readRequest()
        #expect(req["arguments"] == ["x": 1])
        await fake.send(#"{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": \#(req["id"]!.encoded())}"# + "\n")
        let e = await expectError(QMPError.self) { try await r.value }
        #expect(e == .commandFailed(class: "CommandNotFound", desc: "The command bogus has not been found"))
        // The connection is still usable after a refused command.
        let ok = Task { try await client.execute("query-status") }
        let req2 = try await fake.readRequest()
        await fake.send(#"{"return": {"status": "running"}, "id": \#(req2["id"]!.encoded())}"# + "\n")
        #expect(try await ok.value["status"] == "running")
        await client.close()
        await fake.close()
    }

    @Test func malformedJSONIsAProtocolError() async throws {
        let (client, fake) = try await connected()
        let r = Task { try await client.execute("query-status") }
        _ = try await fake.readRequest()
        await fake.send("{\"return\": {\"status\": \n")
        let e = await expectError(QMPError.self) { try await r.value }
        guard case .protocolError(let detail) = e else {
            Issue.record("expected protocolError, got \(String(describing: e))")
            return
        }
        #expect(detail.contains("malformed JSON"))
        // The connection is abandoned: later calls fail at once.
        let e2 = await expectError(QMPError.self) { try await client.execute("query-status") }
        #expect(e2 == .connectionClosed)
        await fake.close()
    }

    @Test func connectionDropFailsEveryPendingCaller() async throws {
        let (client, fake) = try await connected()
        let events = await client.events()
        let a = Task { try await client.execute("query-status", timeout: .seconds(30)) }
        let b = Task { try await client.execute("query-block", timeout: .seconds(30)) }
        let w = Task { try await client.waitForEvent("BLOCK_JOB_READY", timeout: .seconds(30)) }
        _ = try await fake.readRequest()
        _ = try await fake.readRequest()
        let (_, elapsed) = await timed {
            await fake.close()
            let ea = await expectError(QMPError.self) { try await a.value }
            let eb = await expectError(QMPError.self) { try await b.value }
            let ew = await expectError(QMPError.self) { try await w.value }
            #expect(ea == .connectionClosed)
            #expect(eb == .connectionClosed)
            #expect(ew == .connectionClosed)
        }
        #expect(elapsed < .seconds(5))
        // The event stream ends too.
        var count = 0
        for await _ in events { count += 1 }
        #expect(count == 0)
        #expect(await client.isConnected == false)
    }

    @Test func timeoutNamesTheCommandAndLateRepliesAreIgnored() async throws {
        let (client, fake) = try await connected()
        let r = Task { try await client.execute("query-status", timeout: .milliseconds(300)) }
        let req = try await fake.readRequest()
        let e = await expectError(QMPError.self) { try await r.value }
        #expect(e == .timeout("query-status"))
        // The late reply arrives and is dropped; the next command works.
        await fake.send(#"{"return": {"status": "late"}, "id": \#(req["id"]!.encoded())}"# + "\n")
        let next = Task { try await client.execute("query-name") }
        let req2 = try await fake.readRequest()
        await fake.send(#"{"return": {"name": "x"}, "id": \#(req2["id"]!.encoded())}"# + "\n")
        #expect(try await next.value["name"] == "x")
        await client.close()
        await fake.close()
    }

    @Test func silentServerTimesOutAtTheGreeting() async throws {
        let (a, b) = try makeSocketPair()
        let fake = FakePeer(fd: b)
        let (e, elapsed) = await timed {
            await expectError(QMPError.self) { try await QMPClient.connect(adoptingSocket: a, timeout: .milliseconds(300)) }
        }
        #expect(e == .timeout("greeting"))
        #expect(elapsed < .seconds(2))
        await fake.close()
    }

    @Test func somethingElseThanAGreetingIsAProtocolError() async throws {
        let (a, b) = try makeSocketPair()
        let fake = FakePeer(fd: b)
        let client = Task { try await QMPClient.connect(adoptingSocket: a, timeout: .seconds(5)) }
        await fake.send("{\"return\": {}}\n")
        let e = await expectError(QMPError.self) { try await client.value }
        guard case .protocolError = e else {
            Issue.record("expected protocolError, got \(String(describing: e))")
            return
        }
        await fake.close()
    }

    @Test func eventStreamIsBounded() async throws {
        let (client, fake) = try await connected()
        let events = await client.events(bufferingNewest: 2)
        for i in 1...5 {
            await fake.send(#"{"event": "JOB_STATUS_CHANGE", "data": {"id": "job\#(i)", "status": "running"}}"# + "\n")
        }
        // A reply after the events proves they were all handled.
        let r = Task { try await client.execute("query-jobs") }
        let req = try await fake.readRequest()
        await fake.send(#"{"return": [], "id": \#(req["id"]!.encoded())}"# + "\n")
        _ = try await r.value
        await client.close()
        var seen: [String] = []
        for await e in events { seen.append(e.data["id"]?.stringValue ?? "?") }
        #expect(seen == ["job4", "job5"])
        await fake.close()
    }

    @Test func waitForEventSeesEventsAfterTheMarkOnly() async throws {
        let (client, fake) = try await connected()
        await fake.send(#"{"event": "STOP"}"# + "\n")
        let r = Task { try await client.execute("query-status") }
        let req = try await fake.readRequest()
        await fake.send(#"{"return": {}, "id": \#(req["id"]!.encoded())}"# + "\n")
        _ = try await r.value
        let mark = await client.eventMark
        // The earlier STOP is before the mark: not seen.
        let e = await expectError(QMPError.self) { try await client.waitForEvent("STOP", after: mark, timeout: .milliseconds(200)) }
        #expect(e == .timeout("STOP"))
        // An event that arrives before the wait starts, but after the mark, is seen.
        await fake.send(#"{"event": "BLOCK_JOB_COMPLETED", "data": {"device": "job0", "len": 10, "offset": 10}}"# + "\n")
        try await Task.sleep(for: .milliseconds(100))
        let done = try await client.waitForEvent("BLOCK_JOB_COMPLETED", after: mark, timeout: .seconds(2)) { $0.data["device"] == "job0" }
        #expect(done.data["len"] == 10)
        await client.close()
        await fake.close()
    }

    @Test func jsonValueRoundTrip() throws {
        let v: JSONValue = ["a": [1, 2.5, "x\"y\n", nil, true], "b": ["c": -7]]
        #expect(try JSONValue.parse(v.encoded()) == v)
        #expect(v.encoded() == #"{"a":[1,2.5,"x\"y\n",null,true],"b":{"c":-7}}"#)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse("{nope") }
    }
}
