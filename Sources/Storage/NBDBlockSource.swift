import CNBD
import Foundation
import SnapdumpSystem

/// Reads a qcow2 image (or one of its internal snapshots) through a
/// `qemu-nbd --read-only` export and libnbd, so snapdump never parses qcow2
/// itself. Allocation comes from NBD block status (`base:allocation`).
public final class NBDBlockSource: BlockSource, @unchecked Sendable {
    // @unchecked: libnbd handles lock internally; `server` is only touched by close()/deinit.
    public let size: UInt64
    public let name: String
    private let handle: OpaquePointer
    private var server: QemuNBDServer?

    /// Exports `image` with qemu-nbd and connects to it.
    public convenience init(image: String, format: VolumeFormat, snapshot: String?, name: String) throws {
        let server = try QemuNBDServer.start(image: image, format: format, snapshot: snapshot)
        do {
            try self.init(socket: server.socket, name: name)
            self.server = server
        } catch {
            server.stop()
            throw error
        }
    }

    /// Connects to an existing NBD server on a unix socket (`exportName`: the
    /// export to open, e.g. QEMU's fleecing export of one disk; nil: the default export).
    public init(socket: String, name: String, exportName: String? = nil) throws {
        _ = try LibNBD.load()
        guard let h = libnbd.nbd_create!() else { throw Self.error("nbd_create", name) }
        if let exportName, libnbd.nbd_set_export_name!(h, exportName) != 0 {
            let e = Self.error("select NBD export '\(exportName)'", name)
            libnbd.nbd_close!(h)
            throw e
        }
        if libnbd.nbd_add_meta_context!(h, "base:allocation") != 0 || libnbd.nbd_connect_unix!(h, socket) != 0 {
            let e = Self.error("connect to NBD socket \(socket)", name)
            libnbd.nbd_close!(h)
            throw e
        }
        let s = libnbd.nbd_get_size!(h)
        if s < 0 {
            let e = Self.error("nbd_get_size", name)
            libnbd.nbd_close!(h)
            throw e
        }
        handle = h
        size = UInt64(s)
        self.name = name
    }

    static func error(_ what: String, _ name: String) -> StorageError {
        let msg = libnbd.nbd_get_error!().map { String(cString: $0) } ?? "unknown error"
        return StorageError(.backend, "\(what) for '\(name)' failed: \(msg)")
    }

    /// qemu-nbd serves at most 32 MiB per request.
    private static let maxRequest = 32 << 20

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard offset < size else { return 0 }
        let want = Int(min(UInt64(buffer.count), size - offset))
        var done = 0
        while done < want {
            let n = min(want - done, Self.maxRequest)
            if libnbd.nbd_pread!(handle, buffer.baseAddress! + done, n, offset + UInt64(done), 0) != 0 {
                throw Self.error("read at offset \(offset + UInt64(done))", name)
            }
            done += n
        }
        return want
    }

    public func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        let end = min(size, offset + length)
        let collector = ExtentCollector()
        var result: [AllocationRange] = []
        var pos = offset
        while pos < end {
            let count = min(end - pos, 1 << 30)
            collector.ranges.removeAll(keepingCapacity: true)
            let ud = Unmanaged.passUnretained(collector).toOpaque()
            let cb = nbd_extent_callback(callback: { ud, ctx, off, entries, n, _ in
                let c = Unmanaged<ExtentCollector>.fromOpaque(ud!).takeUnretainedValue()
                guard let ctx, String(cString: ctx) == "base:allocation", let entries else { return 0 }
                var o = off
                var i = 0
                while i + 1 < n {
                    let len = UInt64(entries[i]), flags = entries[i + 1]
                    // NBD_STATE_ZERO (2): reads as zeros, allocated or not.
                    c.ranges.append(AllocationRange(offset: o, length: len, kind: flags & 2 != 0 ? .zero : .data))
                    o += len
                    i += 2
                }
                return 0
            }, user_data: ud, free: nil)
            if libnbd.nbd_block_status!(handle, count, pos, cb, 0) != 0 {
                throw Self.error("block status at offset \(pos)", name)
            }
            guard !collector.ranges.isEmpty else { throw StorageError(.backend, "NBD block status for '\(name)' returned no extents at offset \(pos)") }
            for var r in collector.ranges {
                guard r.offset < end else { break }
                r.length = min(r.length, end - r.offset)
                pos = r.offset + r.length
                Self.append(r, to: &result)
            }
        }
        return result
    }

    private static func append(_ r: AllocationRange, to list: inout [AllocationRange]) {
        if let last = list.last, last.kind == r.kind, last.offset + last.length == r.offset {
            list[list.count - 1].length += r.length
        } else {
            list.append(r)
        }
    }

    public func close() throws {
        libnbd.nbd_shutdown!(handle, 0)
        server?.stop()
        server = nil
    }

    deinit {
        libnbd.nbd_close!(handle)
        server?.stop()
    }
}

private final class ExtentCollector {
    var ranges: [AllocationRange] = []
}

/// A `qemu-nbd --read-only` process serving one image on a private unix socket.
/// Stopped by PID (never by name) when the reader closes.
public final class QemuNBDServer: @unchecked Sendable {
    // @unchecked: stop() is idempotent and called from one owner.
    let socket: String
    let pid: Int32
    private let dir: String
    private var stopped = false

    private init(socket: String, pid: Int32, dir: String) {
        self.socket = socket
        self.pid = pid
        self.dir = dir
    }

    /// `bitmaps`: dirty bitmaps of the image to expose (`-B`, as `qemu:dirty-bitmap:<name>`).
    static func start(image: String, format: VolumeFormat, snapshot: String?, bitmaps: [String] = []) throws -> QemuNBDServer {
        stopLeftovers()
        let dir = NSTemporaryDirectory() + "snapdump-nbd-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir, mode: 0o700)
        let sock = dir + "/nbd.sock", pidFile = dir + "/qemu-nbd.pid"
        var argv = ["qemu-nbd", "--read-only", "--format=\(format.rawValue)", "--socket=\(sock)",
                    "--fork", "--pid-file=\(pidFile)", "--shared=1"]
        if let snapshot { argv.append("--load-snapshot=\(snapshot)") }
        for b in bitmaps { argv += ["-B", b] }
        argv.append(image)
        do {
            try Command.runDaemonizing(argv)
            let pidText = try FileSystem.readText(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let pid = Int32(pidText) else { throw StorageError(.backend, "qemu-nbd for '\(image)' wrote no pid") }
            return QemuNBDServer(socket: sock, pid: pid, dir: dir)
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
    }

    /// What snapdump processes that are gone (killed runs) left: their socket directories and,
    /// when the kill came before the client disconnected or even connected, the qemu-nbd itself,
    /// still holding its image open — a lock that makes the next run's block-commit of that image
    /// fail ("Failed to get \"write\" lock"). Such a qemu-nbd is stopped by the PID in its pid
    /// file, only if that process still serves the directory's socket.
    public static func stopLeftovers() {
        let tmp = NSTemporaryDirectory()
        guard let names = try? FileSystem.list(tmp) else { return }
        for name in names where name.hasPrefix("snapdump-nbd-") {
            let owner = name.dropFirst("snapdump-nbd-".count).prefix { $0.isNumber }
            guard let pid = Int32(owner), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            let dir = tmp + name
            if let text = try? FileSystem.readText(dir + "/qemu-nbd.pid"),
               let server = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)),
               serves(pid: server, socket: dir + "/nbd.sock") {
                terminate(server)
            }
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Whether `pid` is a qemu-nbd serving `socket` (its command line names both).
    private static func serves(pid: Int32, socket: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return args.first.map { $0.hasSuffix("qemu-nbd") } == true && args.contains("--socket=\(socket)")
    }

    /// SIGTERM, up to 0.2 s for qemu-nbd to close its image, then SIGKILL: it serves read-only,
    /// so there is nothing to flush, and now and then it left SIGTERM unanswered for over a
    /// second (the tests saw it under load). Not our child (qemu-nbd forked itself), so there is nothing to reap.
    static func terminate(_ pid: Int32) {
        kill(pid, SIGTERM)
        if !waitForExit(pid, within: .milliseconds(200)) {
            kill(pid, SIGKILL)
            _ = waitForExit(pid, within: .seconds(1))
        }
    }

    /// Polls every 2 ms until `pid` has exited (it usually does within a millisecond of SIGTERM).
    private static func waitForExit(_ pid: Int32, within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if hasExited(pid) { return true }
            usleep(2_000)
        }
        return hasExited(pid)
    }

    /// Gone, or a zombie: its parent (PID 1 after `--fork`) reaps it when it gets to it — seconds
    /// later under the sandbox's init here — but a zombie holds no image open and no lock.
    static func hasExited(_ pid: Int32) -> Bool {
        if kill(pid, 0) != 0 { return errno == ESRCH }
        guard let stat = try? FileSystem.readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
        return state == "Z" || state == "X"
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        Self.terminate(pid)
        try? FileManager.default.removeItem(atPath: dir)
    }

    deinit { stop() }
}
