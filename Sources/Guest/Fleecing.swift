import Foundation
import SnapdumpSystem

/// Backup fleecing inside a running QEMU 7.2, the verified Method A of
/// `reference/fleecing-qemu72.md`: every disk's format node gets a qcow2
/// fleecing overlay whose backing is that live node, `blockdev-backup
/// sync=none` copies old data into the overlay before the guest overwrites
/// it (one QMP `transaction`, so all disks share one point in time), and the
/// overlays are exported read-only over QEMU's NBD server.
///
/// Into a repository, the same transaction starts each disk's new dirty
/// bitmap and stops the previous backup's, which the export then offers as
/// `qemu:dirty-bitmap:<name>` (incremental forever, `FleecingIncremental`).
///
/// The guest must never suffer: a write threshold on each overlay's file node,
/// a `BLOCK_IO_ERROR`, a `STOP`, or the job ending by itself aborts the
/// fleecing at once (`failure` says why) and a guest paused by an I/O error is
/// resumed. The NBD readers then fail, and so does the backup.
///
/// Teardown order matters: the export goes before the job, since without the
/// job's copy-before-write filter the overlay reads new data from the live
/// disk. Everything is named `snapdump-fleec…`, so `removeLeftovers` finds
/// what a killed run left.
///
/// The QMP session that set it up (the backup's freeze-window session) stays
/// with it for the whole backup: the events arrive on it. QEMU serves one QMP
/// client at a time, so `letGo` hands the monitor back while a hook script
/// runs (a hook may ask `snapdump vm status`), and `watchAgain` reconnects and
/// asks QEMU for what the missed events would have said: the guest's status,
/// the jobs, and the write thresholds (QEMU disarms one when it fires).
public actor Fleecing {
    public struct Disk: Sendable {
        /// The drive key (`scsi0`); also the NBD export name.
        public var key: String
        /// The fleecing image, created by the caller: qcow2, the disk's virtual size.
        public var image: String
        /// The image is a block device (a thin LV holding the qcow2), opened with `host_device`.
        public var blockDevice: Bool
        /// Abort when the image file grows past this many bytes; nil: no limit.
        public var threshold: UInt64?
        /// A dirty bitmap (not persistent) started on the live node in the jobs' transaction:
        /// it records every write after the point in time the fleecing serves.
        public var startBitmap: String?
        /// The previous backup's bitmap on the live node: stopped in the same transaction (it then
        /// holds exactly the writes between the two points in time) and offered by the export as
        /// the metadata context `qemu:dirty-bitmap:<name>` (QEMU exports only a bitmap that no longer records).
        public var exportBitmap: String?

        public init(key: String, image: String, blockDevice: Bool = false, threshold: UInt64?, startBitmap: String? = nil,
                    exportBitmap: String? = nil) {
            self.key = key
            self.image = image
            self.blockDevice = blockDevice
            self.threshold = threshold
            self.startBitmap = startBitmap
            self.exportBitmap = exportBitmap
        }
    }

    static let prefix = "snapdump-fleec"
    static func jobID(_ key: String) -> String { "snapdump-fleecing-\(key)" }
    static func exportID(_ key: String) -> String { "snapdump-fleecing-\(key)" }
    static func node(_ key: String) -> String { "snapdump-fleece-\(key)" }
    static func fileNode(_ key: String) -> String { node(key) + "-file" }

    public let vmid: Int
    /// The unix socket of QEMU's NBD server; connect with export name = the disk's key.
    public let socket: String
    public let disks: [Disk]
    /// The session the watch listens on; nil while let go (`letGo`).
    private var qmp: QMPClient?
    /// A new QMP session to the same VM (after `letGo`, or for the teardown).
    private let connect: @Sendable () async throws -> QMPClient
    private let log: @Sendable (String) -> Void
    /// Why the fleecing was aborted while the backup ran; nil while all is well.
    public private(set) var failure: String?
    private var watcher: Task<Void, Never>?
    private var teardownTask: Task<Void, any Error>?

    private init(vmid: Int, socket: String, disks: [Disk], qmp: QMPClient, connect: @escaping @Sendable () async throws -> QMPClient,
                 log: @escaping @Sendable (String) -> Void) {
        self.vmid = vmid
        self.socket = socket
        self.disks = disks
        self.qmp = qmp
        self.connect = connect
        self.log = log
    }

    /// Sets up fleecing of `disks` on the VM behind `qmp` (the caller's session,
    /// which this object owns from now on and closes in `teardown`; `connect`
    /// opens another after `letGo`). On failure nothing is left in QEMU.
    public static func start(qmp: QMPClient, connect: @escaping @Sendable () async throws -> QMPClient, vmid: Int, disks: [Disk],
                             socket: String, log: @escaping @Sendable (String) -> Void) async throws -> Fleecing {
        let f = Fleecing(vmid: vmid, socket: socket, disks: disks, qmp: qmp, connect: connect, log: log)
        do {
            try await f.setUp(qmp)
        } catch {
            try? await f.teardown()
            throw error
        }
        return f
    }

    private func setUp(_ qmp: QMPClient) async throws {
        let events = await qmp.events()
        var actions: [JSONValue] = []
        for d in disks {
            guard let live = try await DriveNodes.formatNode(key: d.key, qmp: qmp) else {
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): QEMU has no block device for \(d.key)")
            }
            try await run(qmp, "blockdev-add", [
                "driver": .string("qcow2"), "node-name": .string(Self.node(d.key)),
                "file": .object(["driver": .string(d.blockDevice ? "host_device" : "file"), "node-name": .string(Self.fileNode(d.key)),
                                 "filename": .string(d.image)]),
                "backing": .string(live),
            ], what: "open fleecing image \(d.image)")
            actions.append(.object(["type": .string("blockdev-backup"), "data": .object([
                "job-id": .string(Self.jobID(d.key)), "device": .string(live), "target": .string(Self.node(d.key)),
                "sync": .string("none"), "auto-dismiss": .bool(true),
            ])]))
            if let b = d.startBitmap {
                actions.append(.object(["type": .string("block-dirty-bitmap-add"), "data": .object([
                    "node": .string(live), "name": .string(b), "persistent": .bool(false),
                ])]))
            }
            if let b = d.exportBitmap {
                actions.append(.object(["type": .string("block-dirty-bitmap-disable"), "data": .object([
                    "node": .string(live), "name": .string(b),
                ])]))
            }
        }
        // Watch before the jobs exist, so nothing that happens from here on is missed.
        watch(events)
        try await run(qmp, "transaction", ["actions": .array(actions)], what: "start the fleecing backup jobs (one transaction)")
        for d in disks {
            if let t = d.threshold {
                try await run(qmp, "block-set-write-threshold", ["node-name": .string(Self.fileNode(d.key)), "write-threshold": .int(Int64(t))],
                              what: "set the write threshold of \(d.image)")
            }
        }
        try await run(qmp, "nbd-server-start", ["addr": .object(["type": .string("unix"), "data": .object(["path": .string(socket)])])],
                      what: "start QEMU's NBD server on \(socket)")
        for d in disks {
            var export: [String: JSONValue] = [
                "type": .string("nbd"), "id": .string(Self.exportID(d.key)), "node-name": .string(Self.node(d.key)),
                "name": .string(d.key), "writable": .bool(false),
            ]
            // Found on the image's backing node, the live disk.
            if let b = d.exportBitmap { export["bitmaps"] = .array([.string(b)]) }
            try await run(qmp, "block-export-add", export, what: "export the fleecing image of \(d.key)")
        }
    }

    private func watch(_ events: AsyncStream<QMPEvent>) {
        watcher = Task { [weak self] in
            for await e in events {
                guard let self else { return }
                if await self.examine(e) { return }
            }
        }
    }

    /// Closes the session so that another client (a hook script's `vm status`)
    /// can have QEMU's monitor; events are not seen until `watchAgain`.
    public func letGo() async {
        guard teardownTask == nil, let q = qmp else { return }
        qmp = nil
        watcher?.cancel()
        watcher = nil
        await q.close()
    }

    /// Takes a session again after `letGo` and asks QEMU what the events missed
    /// meanwhile would have said; aborts the fleecing (as `examine` does) when
    /// the guest is no longer running, a job is gone or a write threshold fired.
    public func watchAgain() async throws {
        guard teardownTask == nil, qmp == nil else { return }
        let q = try await connect()
        qmp = q
        watch(await q.events())
        let status = try? await q.execute("query-status", timeout: .seconds(10))
        let jobs = Set((try? await q.execute("query-block-jobs", timeout: .seconds(10)))?.arrayValue?.compactMap { $0["device"]?.stringValue } ?? [])
        let nodes = (try? await q.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10)))?.arrayValue ?? []
        var why: String?
        if let st = status?["status"]?.stringValue, st != "running" {
            why = st == "io-error" ? "I/O error during fleecing (the guest was paused: \(st)) - fleecing aborted"
                : "the guest was paused during fleecing (\(st)) - fleecing aborted"
        } else if let gone = disks.first(where: { !jobs.contains(Self.jobID($0.key)) }) {
            why = "fleecing job \(Self.jobID(gone.key)) ended by itself"
        } else if let fired = disks.first(where: { d in
            d.threshold != nil && nodes.contains { $0["node-name"]?.stringValue == Self.fileNode(d.key) && $0["write_threshold"]?.intValue == 0 }
        }) {
            why = thresholdMessage(fired)
        }
        if let why { await abort(why) }
    }

    private func thresholdMessage(_ d: Disk) -> String {
        let limit = d.threshold.map { Self.mib($0) } ?? "its limit"
        return "fleecing image \(d.image) of \(d.key) grew past \(limit) (the guest overwrote more during the backup than the"
            + " fleecing storage can hold) - fleecing aborted before the storage filled up, the guest keeps running"
    }

    private func run(_ qmp: QMPClient, _ command: String, _ arguments: [String: JSONValue], what: String) async throws {
        do {
            _ = try await qmp.execute(command, arguments: arguments, timeout: .seconds(30))
        } catch {
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot \(what): \(error)")
        }
    }

    /// Looks at one event; true when the fleecing was aborted (the watch ends).
    private func examine(_ e: QMPEvent) async -> Bool {
        guard teardownTask == nil else { return true }
        var why: String?
        switch e.name {
        case "BLOCK_WRITE_THRESHOLD":
            if let n = e.data["node-name"]?.stringValue, let d = disks.first(where: { Self.fileNode($0.key) == n }) {
                why = thresholdMessage(d)
            }
        case "BLOCK_IO_ERROR":
            let reason = e.data["reason"]?.stringValue ?? "I/O error"
            why = "I/O error on node \(e.data["node-name"]?.stringValue ?? "?") during fleecing (\(reason)) - fleecing aborted"
        case "STOP":
            why = "the guest was paused during fleecing - fleecing aborted"
        case "BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR":
            if let job = e.data["device"]?.stringValue, disks.contains(where: { Self.jobID($0.key) == job }) {
                let detail = e.data["error"]?.stringValue.map { ": \($0)" } ?? ""
                why = "fleecing job \(job) ended by itself (\(e.name))\(detail)"
            }
        default:
            break
        }
        guard let why else { return false }
        await abort(why)
        return true
    }

    private func abort(_ why: String) async {
        failure = why
        log("ERROR: \(why)")
        do { try await teardown() } catch { log("ERROR: cannot remove fleecing of VM \(vmid) from QEMU: \(error)") }
    }

    /// Export, NBD server, jobs, nodes — in that order — then closes the QMP
    /// connection; resumes a guest that an I/O error paused. Idempotent; a second
    /// caller waits for the first. The fleecing images stay (the caller deletes them).
    public func teardown() async throws {
        if let t = teardownTask { return try await t.value }
        let held = self.qmp, connect = self.connect, vmid = self.vmid, log = self.log
        qmp = nil
        let t = Task {
            // Let go (a hook ran, or the set-up failed before the watch): a new session does it.
            let qmp: QMPClient
            if let held { qmp = held } else { qmp = try await connect() }
            defer { Task { await qmp.close() } }
            _ = try await Self.remove(qmp: qmp, vmid: vmid, log: log)
        }
        teardownTask = t
        watcher?.cancel()
        try await t.value
    }

    /// Removes every snapdump fleecing export, job and node from the QEMU behind
    /// `qmp` (left by a killed run), stops its NBD server, resumes a guest an I/O
    /// error paused, and deletes the fleecing images those nodes had open.
    /// Returns what it removed, for the log.
    public static func removeLeftovers(qmp: QMPClient, vmid: Int) async throws -> [String] {
        let removed = try await remove(qmp: qmp, vmid: vmid, log: { _ in })
        // Image files only: a thin LV's path is its /dev link, and unlinking that frees
        // nothing (the storage frees the LV: `fleecingImages` / `freeFleecingImage`).
        var files: [String] = []
        for file in removed.files {
            var st = stat()
            if stat(file, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK { continue }
            try FileSystem.remove(file)
            files.append(file)
        }
        return removed.what + files.map { "fleecing image \($0)" }
    }

    private static func remove(qmp: QMPClient, vmid: Int, log: @Sendable (String) -> Void) async throws -> (what: [String], files: [String]) {
        var what: [String] = []
        func fail(_ action: String, _ error: any Error) -> GuestError {
            GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot \(action) (fleecing cleanup): \(error)")
        }
        // 1. Exports: a reader must never see the overlay once the job is gone.
        let exports = try await qmp.execute("query-block-exports", timeout: .seconds(10)).arrayValue ?? []
        for x in exports {
            guard let id = x["id"]?.stringValue, id.hasPrefix(prefix) else { continue }
            let mark = await qmp.eventMark
            do {
                _ = try await qmp.execute("block-export-del", arguments: ["id": .string(id), "mode": .string("hard")], timeout: .seconds(10))
            } catch { throw fail("delete NBD export \(id)", error) }
            _ = try? await qmp.waitForEvent("BLOCK_EXPORT_DELETED", after: mark, timeout: .seconds(10)) { $0.data["id"]?.stringValue == id }
            what.append("NBD export \(id)")
        }
        // Nobody else starts QEMU's built-in NBD server in a snapdump VM; "not running" is fine.
        _ = try? await qmp.execute("nbd-server-stop", timeout: .seconds(10))
        // 2. Jobs: cancelling removes the copy-before-write filter above the live node.
        let jobs = try await qmp.execute("query-block-jobs", timeout: .seconds(10)).arrayValue ?? []
        var cancelled: [String] = []
        for j in jobs {
            guard let id = j["device"]?.stringValue, id.hasPrefix(prefix) else { continue }
            do {
                _ = try await qmp.execute("block-job-cancel", arguments: ["device": .string(id), "force": .bool(true)], timeout: .seconds(10))
            } catch { throw fail("cancel block job \(id)", error) }
            cancelled.append(id)
            what.append("block job \(id)")
        }
        let deadline = ContinuousClock.now + .seconds(60)
        while !cancelled.isEmpty {
            let left = try await qmp.execute("query-block-jobs", timeout: .seconds(10)).arrayValue ?? []
            let ids = Set(left.compactMap { $0["device"]?.stringValue })
            cancelled.removeAll { !ids.contains($0) }
            if cancelled.isEmpty { break }
            if ContinuousClock.now > deadline { throw GuestError(vmid: vmid, .timeout, "VM \(vmid): block jobs \(cancelled) did not end after cancel") }
            try await Task.sleep(for: .milliseconds(20))
        }
        // 3. Nodes (the file child goes with its qcow2 node).
        let nodes = try await qmp.execute("query-named-block-nodes", arguments: ["flat": .bool(true)], timeout: .seconds(10)).arrayValue ?? []
        var files: [String] = []
        for n in nodes {
            guard let name = n["node-name"]?.stringValue, name.hasPrefix(prefix), !name.hasSuffix("-file") else { continue }
            if let file = nodes.first(where: { $0["node-name"]?.stringValue == name + "-file" })?["file"]?.stringValue { files.append(file) }
            do {
                _ = try await qmp.execute("blockdev-del", arguments: ["node-name": .string(name)], timeout: .seconds(10))
            } catch { throw fail("delete block node \(name)", error) }
            what.append("block node \(name)")
        }
        // 4. A guest paused by an I/O error (the fleecing image filled up after all) runs again;
        //    its failed write is retried now that the job is gone.
        let status = try? await qmp.execute("query-status", timeout: .seconds(10))
        if status?["status"]?.stringValue == "io-error" {
            do { _ = try await qmp.execute("cont", timeout: .seconds(10)) } catch { throw fail("resume the guest after an I/O error", error) }
            log("WARN: VM \(vmid) was paused by an I/O error during fleecing - resumed it")
            what.append("the pause after an I/O error (resumed)")
        }
        return (what, files)
    }

    static func mib(_ bytes: UInt64) -> String {
        String(format: "%.1f MiB", Double(bytes) / 1_048_576)
    }
}
