import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Guest

/// `Fleecing` against a fake QEMU that keeps the block graph (nodes, jobs,
/// exports, VM status) and records every command: the order of set-up and
/// teardown, and the abort on a write-threshold event.
@Suite("Fleecing with a fake QEMU")
struct FleecingFakeTests {
    /// A scripted QEMU over a socketpair; one client at a time, a new one after the last went away (`reconnect`).
    final class FakeQEMU: @unchecked Sendable {
        // @unchecked: state is touched only by the serve loop, `commands` read after it (under `lock`).
        private(set) var peer: FakePeer
        private let lock = NSLock()
        private var _commands: [String] = []
        var nodes: [[String: JSONValue]] = [["node-name": "drive-scsi0", "file": "/img/vm-100-disk-0.raw"]]
        var jobs: [String] = []
        var exports: [String] = []
        var status = "running"
        var nbdRunning = false
        /// Write thresholds by node, as `query-named-block-nodes` reports them (0: none, or fired).
        var thresholds: [String: Int64] = [:]

        init(peer: FakePeer) { self.peer = peer }

        /// A new client on the same QEMU (the old one must have gone: QMP serves one at a time).
        func reconnect() async throws -> (QMPClient, Task<Void, Never>) {
            let (c, p) = try await FleecingFakeTests.handshake()
            peer = p
            lock.withLock { _connects += 1 }
            return (c, Task { await self.serve() })
        }

        private var _connects = 0
        var connects: Int { lock.withLock { _connects } }

        var commands: [String] { lock.withLock { _commands } }

        func reply(_ id: JSONValue, _ value: JSONValue) async {
            await peer.send(JSONValue.object(["return": value, "id": id]).encoded() + "\r\n")
        }

        /// An event, written at once rather than through the peer's queue: while the serve loop waits for a
        /// request, its read holds that queue for up to 30 s, and an event queued behind it would reach the
        /// client only after the fake had stopped serving. (A reply is written before any event that
        /// follows it: `reply` returns once it is sent.)
        func event(_ name: String, _ data: JSONValue) {
            let bytes = Array((JSONValue.object(["event": .string(name), "data": data]).encoded() + "\r\n").utf8)
            _ = bytes.withUnsafeBytes { Glibc.send(peer.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        /// Answers until the client goes away.
        func serve() async {
            while let r = try? await peer.readRequest(timeout: .seconds(30)) {
                guard let cmd = r["execute"]?.stringValue, let id = r["id"] else { continue }
                let a = r["arguments"] ?? .null
                lock.withLock { _commands.append(cmd) }
                switch cmd {
                case "query-block":
                    await reply(id, [["qdev": "scsi0", "inserted": ["node-name": "drive-scsi0", "file": "/img/vm-100-disk-0.raw"]]])
                case "blockdev-add":
                    let name = a["node-name"]!.stringValue!
                    nodes.append(["node-name": .string(name)])
                    if let f = a["file"], let fn = f["node-name"]?.stringValue {
                        nodes.append(["node-name": .string(fn), "file": f["filename"] ?? .null])
                    }
                    await reply(id, [:])
                case "transaction":
                    for action in a["actions"]?.arrayValue ?? [] { jobs.append(action["data"]!["job-id"]!.stringValue!) }
                    await reply(id, [:])
                case "nbd-server-start":
                    nbdRunning = true
                    await reply(id, [:])
                case "block-export-add":
                    exports.append(a["id"]!.stringValue!)
                    await reply(id, [:])
                case "query-block-exports":
                    await reply(id, .array(exports.map { ["id": .string($0), "type": "nbd"] }))
                case "block-export-del":
                    let x = a["id"]!.stringValue!
                    exports.removeAll { $0 == x }
                    await reply(id, [:])
                    event("BLOCK_EXPORT_DELETED", ["id": .string(x)])
                case "nbd-server-stop":
                    nbdRunning = false
                    await reply(id, [:])
                case "query-block-jobs":
                    await reply(id, .array(jobs.map { ["device": .string($0), "type": "backup", "status": "running"] }))
                case "block-job-cancel":
                    jobs.removeAll { $0 == a["device"]!.stringValue! }
                    await reply(id, [:])
                case "block-set-write-threshold":
                    thresholds[a["node-name"]!.stringValue!] = a["write-threshold"]!.intValue!
                    await reply(id, [:])
                case "query-named-block-nodes":
                    await reply(id, .array(nodes.map { n in
                        var n = n
                        n["write_threshold"] = .int(n["node-name"]?.stringValue.flatMap { thresholds[$0] } ?? 0)
                        return JSONValue.object(n)
                    }))
                case "blockdev-del":
                    let n = a["node-name"]!.stringValue!
                    nodes.removeAll { $0["node-name"]?.stringValue == n || $0["node-name"]?.stringValue == n + "-file" }
                    await reply(id, [:])
                case "query-status":
                    await reply(id, ["status": .string(status), "running": .bool(status == "running")])
                case "cont":
                    status = "running"
                    await reply(id, [:])
                default:
                    await reply(id, [:])
                }
            }
        }
    }

    static func handshake() async throws -> (QMPClient, FakePeer) {
        let (a, b) = try makeSocketPair()
        let peer = FakePeer(fd: b)
        async let client = QMPClient.connect(adoptingSocket: a, label: "fake", timeout: .seconds(5))
        await peer.send(QMPClientFakeTests.greeting)
        let caps = try await peer.readRequest()
        await peer.send(#"{"return": {}, "id": \#(caps["id"]!.encoded())}"# + "\r\n")
        return (try await client, peer)
    }

    func connected() async throws -> (QMPClient, FakeQEMU, Task<Void, Never>) {
        let (c, peer) = try await Self.handshake()
        let qemu = FakeQEMU(peer: peer)
        return (c, qemu, Task { await qemu.serve() })
    }

    static let setUp = ["query-block", "blockdev-add", "transaction", "block-set-write-threshold", "nbd-server-start", "block-export-add"]
    /// Export before job: a reader must never see the overlay without the job's filter.
    static let teardown = ["query-block-exports", "block-export-del", "nbd-server-stop", "query-block-jobs", "block-job-cancel",
                           "query-block-jobs", "query-named-block-nodes", "blockdev-del", "query-status"]

    @Test func setUpInOneTransactionAndTeardownExportFirst() async throws {
        let (qmp, qemu, server) = try await connected()
        let f = try await Fleecing.start(qmp: qmp, connect: { throw CancellationError() }, vmid: 100, disks: [.init(key: "scsi0", image: "/fl/vm-100-fleece-0.qcow2", threshold: 1 << 20)],
                                         socket: "/run/x.nbd", log: { _ in })
        #expect(qemu.commands == Self.setUp)
        #expect(qemu.jobs == ["snapdump-fleecing-scsi0"] && qemu.exports == ["snapdump-fleecing-scsi0"] && qemu.nbdRunning)
        try await f.teardown()
        try await f.teardown()  // idempotent
        await server.value
        #expect(qemu.commands == Self.setUp + Self.teardown)
        #expect(qemu.jobs.isEmpty && qemu.exports.isEmpty && !qemu.nbdRunning)
        #expect(qemu.nodes.map { $0["node-name"]?.stringValue } == ["drive-scsi0"])
        #expect(await f.failure == nil)
    }

    @Test func writeThresholdAbortsAndResumesAGuestPausedByAnIOError() async throws {
        let (qmp, qemu, server) = try await connected()
        let lines = LineBox()
        let f = try await Fleecing.start(qmp: qmp, connect: { throw CancellationError() }, vmid: 100, disks: [.init(key: "scsi0", image: "/fl/vm-100-fleece-0.qcow2", threshold: 1 << 20)],
                                         socket: "/run/x.nbd", log: { lines.append($0) })
        qemu.status = "io-error"
        qemu.event("BLOCK_WRITE_THRESHOLD", ["node-name": "snapdump-fleece-scsi0-file", "write-threshold": 1048576, "amount-exceeded": 4096])
        await server.value  // the abort closes the connection
        let failure = try #require(await f.failure)
        #expect(failure.contains("fleecing image /fl/vm-100-fleece-0.qcow2 of scsi0 grew past 1.0 MiB"), "\(failure)")
        #expect(qemu.commands == Self.setUp + Self.teardown + ["cont"])
        #expect(qemu.status == "running" && qemu.jobs.isEmpty && qemu.exports.isEmpty)
        #expect(lines.all.contains { $0.hasPrefix("WARN: VM 100 was paused by an I/O error during fleecing - resumed it") }, "\(lines.all)")
        try await f.teardown()  // the backup's own teardown after the abort: nothing more to do
        #expect(qemu.commands.count == Self.setUp.count + Self.teardown.count + 1)
    }

    /// While a hook script runs, the fleecing lets QEMU's monitor go (QMP serves one client at a
    /// time), then watches again on a new session: later events still abort it.
    @Test func letGoForAHookThenWatchAgainOnANewSession() async throws {
        let (qmp, qemu, server) = try await connected()
        let f = try await Fleecing.start(qmp: qmp, connect: { try await qemu.reconnect().0 }, vmid: 100,
                                         disks: [.init(key: "scsi0", image: "/fl/vm-100-fleece-0.qcow2", threshold: 1 << 20)],
                                         socket: "/run/x.nbd", log: { _ in })
        await f.letGo()
        await server.value  // the session is closed: the monitor is free for the hook's client
        try await f.watchAgain()
        #expect(qemu.connects == 1)
        #expect(await f.failure == nil, "nothing happened meanwhile")
        #expect(qemu.commands.suffix(3) == ["query-status", "query-block-jobs", "query-named-block-nodes"])
        qemu.event("BLOCK_WRITE_THRESHOLD", ["node-name": "snapdump-fleece-scsi0-file", "write-threshold": 1048576, "amount-exceeded": 4096])
        for _ in 0..<200 where await f.failure == nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(await f.failure?.contains("grew past 1.0 MiB") == true)
        try await f.teardown()
        #expect(qemu.jobs.isEmpty && qemu.exports.isEmpty && !qemu.nbdRunning)
    }

    /// Events are lost while nobody listens: what they would have said is asked of QEMU instead
    /// (a fired threshold reads 0, a paused guest, a job gone), and the fleecing is aborted.
    @Test func whatHappenedWhileLetGoIsFoundOnWatchingAgain() async throws {
        for (what, change, says) in [
            ("threshold", { (q: FakeQEMU) in q.thresholds["snapdump-fleece-scsi0-file"] = 0 }, "grew past 1.0 MiB"),
            ("io-error", { (q: FakeQEMU) in q.status = "io-error" }, "I/O error during fleecing"),
            ("paused", { (q: FakeQEMU) in q.status = "paused" }, "the guest was paused during fleecing"),
            ("job", { (q: FakeQEMU) in q.jobs = [] }, "fleecing job snapdump-fleecing-scsi0 ended by itself"),
        ] as [(String, (FakeQEMU) -> Void, String)] {
            let (qmp, qemu, server) = try await connected()
            let f = try await Fleecing.start(qmp: qmp, connect: { try await qemu.reconnect().0 }, vmid: 100,
                                             disks: [.init(key: "scsi0", image: "/fl/vm-100-fleece-0.qcow2", threshold: 1 << 20)],
                                             socket: "/run/x.nbd", log: { _ in })
            #expect(qemu.thresholds["snapdump-fleece-scsi0-file"] == 1 << 20)
            await f.letGo()
            await server.value
            change(qemu)
            try await f.watchAgain()
            let failure = await f.failure
            #expect(failure?.contains(says) == true, "\(what): \(failure ?? "no failure")")
            #expect(qemu.jobs.isEmpty && qemu.exports.isEmpty && !qemu.nbdRunning, "\(what)")
            #expect(qemu.status == "running" || what == "paused", "\(what): an I/O-error pause is resumed")
        }
    }

    @Test func leftoversOfAKilledRunAreFoundByName() async throws {
        let (qmp, qemu, server) = try await connected()
        qemu.nodes += [["node-name": "snapdump-fleece-scsi1"], ["node-name": "snapdump-fleece-scsi1-file", "file": "/nonexistent/vm-100-fleece-3.qcow2"]]
        qemu.jobs = ["snapdump-fleecing-scsi1", "snapdump-move-scsi0"]
        qemu.exports = ["snapdump-fleecing-scsi1"]
        let removed = try await Fleecing.removeLeftovers(qmp: qmp, vmid: 100)
        #expect(removed == ["NBD export snapdump-fleecing-scsi1", "block job snapdump-fleecing-scsi1", "block node snapdump-fleece-scsi1",
                            "fleecing image /nonexistent/vm-100-fleece-3.qcow2"])
        #expect(qemu.jobs == ["snapdump-move-scsi0"], "a disk move's job is not ours to cancel")
        await qmp.close()
        await server.value
    }
}

final class LineBox: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ s: String) { lock.withLock { lines.append(s) } }
    var all: [String] { lock.withLock { lines } }
}
