#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Guest
import SnapdumpConfig
import SnapdumpSystem
import Testing

/// The storages guest tests boot on, each backed by a fixture.
public enum TestStorageKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case dirRaw, dirQcow2, dirReflinkXFS, btrfs, zfspool, rbd

    public var testDescription: String { rawValue }

    /// The fixture variable the kind needs.
    public var fixture: String {
        switch self {
        case .dirRaw, .dirQcow2: return "SNAPDUMP_TEST_DIR"
        case .dirReflinkXFS: return "SNAPDUMP_TEST_XFS"
        case .btrfs: return "SNAPDUMP_TEST_BTRFS"
        case .zfspool: return "SNAPDUMP_TEST_ZPOOL"
        case .rbd: return "SNAPDUMP_TEST_CEPH_CONF"
        }
    }

    public var imageFormat: String { self == .dirQcow2 ? "qcow2" : "raw" }
}

/// One test's snapdump world, driven through the real `snapdump` binary as a
/// user would: a config dir in /tmp (short: unix socket paths), storages in
/// fresh subdirectories (or a fresh ZFS dataset) of the fixtures, the test
/// guest's VMs, and commands started in the background. The one harness of
/// every guest suite (GuestTests and BackupTests).
///
/// `tearDown()` runs on every path (`run` calls it; callers of `init` use
/// `defer`): background commands and every QEMU serving one of this config
/// dir's sockets are SIGKILLed by verified pid (never by name), the VMs are
/// destroyed, and the storages' directories or datasets — btrfs subvolumes and
/// read-only snapshots included — are removed.
public final class GuestHarness: @unchecked Sendable {
    // @unchecked: used by one test at a time, from its own task.
    public let configDir: String
    public let paths: SnapdumpPaths
    public let tag: String
    private var storageRoots: [(id: String, path: String)] = []
    private var zfsDatasets: [String] = []
    private var cephPools: [(CephFixture, String)] = []
    private var children: [BackgroundCommand] = []
    private var guest: TestGuestImage.Files?

    public init(_ label: String) throws {
        guard FileManager.default.isExecutableFile(atPath: SnapdumpBinary.binary) else {
            throw HarnessError("snapdump binary missing at \(SnapdumpBinary.binary) (swift build first, or set SNAPDUMP_BIN)")
        }
        configDir = try Integration.scratchDirectory("h-\(label)", under: "/tmp")
        paths = SnapdumpPaths(configDir: configDir, runDir: configDir + "/run")
        tag = "h-\(label)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// A harness with the test guest built (its files in `guestDir`).
    public convenience init(label: String) throws {
        try self.init(label)
        guest = try TestGuestImage.files()
    }

    /// Runs `body` with a new harness and tears it down whatever happens.
    public static func run(_ label: String, _ body: (GuestHarness) async throws -> Void) async throws {
        let h = try GuestHarness(label)
        let result: Result<Void, any Error>
        do { result = .success(try await body(h)) } catch { result = .failure(error) }
        _ = try? await Blocking.run("teardown") { h.tearDown() }
        try result.get()
    }

    /// The test guest's files (built on first use).
    public func guestFiles() throws -> TestGuestImage.Files {
        if let guest { return guest }
        let g = try TestGuestImage.files()
        guest = g
        return g
    }

    public var guestDir: String { (try? guestFiles().directory) ?? "" }
    public var checker: String { (try? guestFiles().checker) ?? "" }

    // MARK: Storages

    /// Adds a storage `id` of `kind` in a fresh subdirectory (dataset) of its fixture.
    public func addStorage(_ id: String, _ kind: TestStorageKind) throws {
        let base = try Integration.require(kind.fixture)
        switch kind {
        case .dirRaw, .dirQcow2, .dirReflinkXFS:
            var extra: [String] = []
            if kind == .dirQcow2 { extra += ["--format", "qcow2"] }
            if kind == .dirReflinkXFS { extra += ["--reflink", "1"] }
            try addStorage("dir", id, under: base, extra: extra)
        case .btrfs:
            try addStorage("btrfs", id, under: base)
        case .zfspool:
            let dataset = "\(base)/\(tag)-\(id)"
            try Command.run(["zfs", "create", dataset])
            zfsDatasets.append(dataset)
            try must(["storage", "add", "zfspool", id, "--pool", dataset])
        case .rbd:
            try addRBD(id, ceph: try CephFixture.require())
        }
    }

    /// Adds an rbd storage on a fresh pool of the fixture cluster (removed at teardown); returns the pool.
    @discardableResult
    public func addRBD(_ id: String, ceph: CephFixture) throws -> String {
        let pool = "\(tag)-\(id)"
        try ceph.createPool(pool)
        cephPools.append((ceph, pool))
        try must(ceph.storageAddArguments(id, pool: pool))
        return pool
    }

    /// Adds a storage of `type` whose data lives in a fresh directory under `base`.
    public func addStorage(_ type: String, _ id: String, under base: String, extra: [String] = []) throws {
        let dir = "\(base)/\(tag)-\(id)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        storageRoots.append((id, dir))
        try must(["storage", "add", type, id, "--path", dir] + extra)
    }

    /// A plain `dir` storage in a fresh directory under `base`.
    public func addDirStorage(_ id: String, under base: String) throws {
        try addStorage("dir", id, under: base)
    }

    /// A `zfspool` storage on an existing pool or dataset (its volumes are freed by `vm destroy` at teardown).
    public func addZFSPool(_ id: String, pool: String) throws {
        try must(["storage", "add", "zfspool", id, "--pool", pool])
    }

    /// Every file below the storages' directories and datasets (to see what a command left).
    public func storageFiles() -> [String] {
        var roots = storageRoots.map(\.path)
        for d in zfsDatasets {
            if let mp = try? Command.run(["zfs", "get", "-H", "-o", "value", "mountpoint", d]) {
                roots.append(mp.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        var files: [String] = []
        for r in roots {
            guard let e = FileManager.default.enumerator(atPath: r) else { continue }
            while let f = e.nextObject() as? String {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: "\(r)/\(f)", isDirectory: &isDir), !isDir.boolValue { files.append("\(r)/\(f)") }
            }
        }
        return files.sorted()
    }

    // MARK: Running snapdump

    /// `snapdump ARGS --config-dir DIR`; never throws for a non-zero exit.
    @discardableResult
    public func run(_ args: [String], environment: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        try SnapdumpBinary.run(args, configDir: configDir, environment: environment)
    }

    /// Like `run`, but a non-zero exit is a thrown error with the output.
    @discardableResult
    public func must(_ args: [String], environment: [String: String] = [:]) throws -> SnapdumpBinary.Result {
        let r = try run(args, environment: environment)
        guard r.status == 0 else { throw HarnessError("snapdump \(args.joined(separator: " ")) failed: \(r)") }
        return r
    }

    /// `must`, returning stdout.
    @discardableResult
    public func mustRun(_ args: [String]) throws -> String { try must(args).stdout }

    /// Runs a command that must fail with one clear error line naming
    /// `mentioning`, and must leave the VM config byte-for-byte as it was.
    public func expectRefused(_ args: [String], vmid: Int?, mentioning: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = vmid.flatMap { try? Data(contentsOf: URL(fileURLWithPath: paths.vmConfig($0))) }
        let o = try run(args)
        #expect(o.status != 0, "snapdump \(args.joined(separator: " ")) succeeded: \(o.stdout)", sourceLocation: sourceLocation)
        #expect(o.errorLines.count == 1, "expected one error line from \(args.joined(separator: " ")), got:\n\(o.stderr)", sourceLocation: sourceLocation)
        for m in mentioning {
            #expect(o.stderr.contains(m), "error of \(args.joined(separator: " ")) does not name '\(m)': \(o.stderr)", sourceLocation: sourceLocation)
        }
        if let vmid {
            let after = try? Data(contentsOf: URL(fileURLWithPath: paths.vmConfig(vmid)))
            #expect(after == before, "snapdump \(args.joined(separator: " ")) changed \(paths.vmConfig(vmid))", sourceLocation: sourceLocation)
        }
    }

    public func configText(_ vmid: Int) throws -> String { try FileSystem.readText(paths.vmConfig(vmid)) }

    public func config(_ vmid: Int) throws -> VMConfig { try VMConfig.load(vmid: vmid, paths: paths) }

    /// The path of a volume (`snapdump volume path`).
    public func volumePath(_ volid: String) throws -> String {
        try mustRun(["volume", "path", volid]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts `snapdump ARGS --config-dir DIR` in the background (killed at teardown if still running).
    public func spawn(_ args: [String]) throws -> BackgroundCommand {
        let c = try BackgroundCommand([SnapdumpBinary.binary] + args + ["--config-dir", configDir],
                                      outputPath: configDir + "/spawn-\(children.count).out")
        children.append(c)
        return c
    }

    // MARK: VMs

    /// `vm create` of the test guest with one `scsi0` disk on `storage`.
    public func createGuest(_ vmid: Int, storage: String, size: String = "64M", guest: (kernel: String, initrd: String, checker: String),
                            append: String = "console=ttyS0 quiet panic=-1 snapdump.interval_ms=10") throws {
        try must(["vm", "create", String(vmid), "--memory", "256", "--scsi0", "\(storage):\(size)",
                  "--kernel", guest.kernel, "--initrd", guest.initrd, "--append", append])
    }

    /// Creates VM `vmid` running the test guest with a new disk `storage:size`, starts it and waits for a heartbeat.
    /// `more` are further disks (`scsi1`, …), not written by the workload.
    public func startGuest(_ vmid: Int, disk: String, more: [String] = [], agent: Bool = true, intervalMs: Int = 10) async throws {
        let g = try guestFiles()
        let extra = more.enumerated().flatMap { ["--scsi\($0.offset + 1)", $0.element] }
        try must(["vm", "create", "\(vmid)", "--name", "guest\(vmid)", "--memory", "256", "--scsi0", disk] + extra
                 + ["--agent", agent ? "1" : "0", "--kernel", g.kernel, "--initrd", g.initrd,
                    "--append", "console=ttyS0 quiet panic=-1 snapdump.interval_ms=\(intervalMs)"])
        try must(["vm", "start", "\(vmid)"])
        _ = try await waitForHeartbeat(vmid, above: 0, timeout: .seconds(90))
    }

    /// `vm start`, checking that a live QEMU serves the VM.
    public func start(_ vmid: Int) throws {
        try must(["vm", "start", String(vmid)])
        guard pid(vmid) != nil else { throw HarnessError("VM \(vmid) started but has no live QEMU") }
    }

    /// The live QEMU pid of `vmid` from its pidfile, verified by its command line naming the VM's QMP socket.
    public func pid(_ vmid: Int) -> Int32? {
        guard let text = try? FileSystem.readText(paths.pidFile(vmid)),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), Processes.isAlive(pid),
              Processes.commandLine(pid).contains(where: { $0.contains(paths.qmpSocket(vmid)) }) else { return nil }
        return pid
    }

    /// Waits until the QEMU with `pid` is gone.
    public func waitForExit(_ vmid: Int, pid: Int32, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while self.pid(vmid) == pid {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return true
    }

    public func consoleLog(_ vmid: Int) -> String { paths.consoleLog(vmid) }

    /// Polls the console log until a line starts with `prefix`.
    @discardableResult
    public func waitForConsole(_ vmid: Int, _ prefix: String, timeout: Duration) async throws -> String {
        try await Console.waitForLine(consoleLog(vmid), prefix, timeout: timeout, label: "VM \(vmid): ")
    }

    /// Sequence numbers of complete `HB <seq>` lines so far.
    public func heartbeats(_ vmid: Int) -> [Int] {
        Heartbeats.parse((try? FileSystem.readText(consoleLog(vmid))) ?? "")
    }

    public func lastHeartbeat(_ vmid: Int) -> Int { heartbeats(vmid).last ?? 0 }

    /// Waits until a heartbeat above `seq` arrives; returns it.
    @discardableResult
    public func waitForHeartbeat(_ vmid: Int, above seq: Int, timeout: Duration = .seconds(30)) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        while true {
            let last = lastHeartbeat(vmid)
            if last > seq { return last }
            if ContinuousClock.now >= deadline {
                let tail = ((try? FileSystem.readText(consoleLog(vmid))) ?? "").split(whereSeparator: \.isNewline).suffix(10).joined(separator: "\n")
                throw HarnessError("VM \(vmid): no heartbeat above \(seq) within \(timeout) (last \(last)); console tail:\n\(tail)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Boots `vmid` and waits for its workload's first heartbeats.
    public func startAndWaitForHeartbeats(_ vmid: Int) async throws {
        try start(vmid)
        try await waitForConsole(vmid, "SNAPDUMP-GUEST READY", timeout: .seconds(120))
        try await waitForHeartbeat(vmid, above: 5)
    }

    // MARK: Records

    public struct RecordCheck: Sendable {
        public var output: String
        public var status: Int32
        public var consistent: Bool { status == 0 && output.contains("status=consistent\n") }
        public var lastContiguous: Int { value("last_contiguous") ?? -1 }
        public func value(_ key: String) -> Int? {
            output.split(separator: "\n").first { $0.hasPrefix(key + "=") }.flatMap { Int($0.dropFirst(key.count + 1)) }
        }
        /// Every `key=value` line.
        public var fields: [String: String] {
            var result: [String: String] = [:]
            for line in output.split(separator: "\n") {
                if let eq = line.firstIndex(of: "=") { result[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
            }
            return result
        }
    }

    /// Runs `snapdump-record-check` on a raw image, or on a raw copy of a qcow2 one.
    public func checkRecords(_ image: String, format: String, checker: String) throws -> RecordCheck {
        var path = image
        var tmp: String?
        if format != "raw" || image.hasPrefix("rbd:") {
            // The checker reads files: a raw copy (an RBD image through QEMU's librbd driver).
            let t = configDir + "/check-\(UUID().uuidString.prefix(6)).raw"
            try Command.run(["qemu-img", "convert", "-U", "-f", format, "-O", "raw", image, t])
            path = t
            tmp = t
        }
        defer { if let tmp { try? FileSystem.remove(tmp) } }
        let o = try Command.capture([checker, path])
        return RecordCheck(output: o.stdout, status: o.status)
    }

    /// The record checker's `key=value` lines for a volume (qcow2 checked through a raw copy).
    public func checkRecords(volume: String) throws -> [String: String] {
        let path = try volumePath(volume)
        let r = try checkRecords(path, format: path.hasSuffix(".qcow2") ? "qcow2" : "raw", checker: try guestFiles().checker)
        guard r.status == 0 || r.status == 1 else { throw HarnessError("record checker failed on \(path): exit \(r.status)") }
        return r.fields
    }

    // MARK: Teardown

    /// Kills background commands and every QEMU of this config dir (by
    /// verified pid), destroys the VMs, removes the storages' data and the config dir.
    public func tearDown() {
        for c in children { c.killAndWait() }
        GuestCleanup.killQEMUs(runDir: paths.runDir)
        for vmid in (try? VMConfig.list(paths: paths)) ?? [] {
            _ = try? run(["vm", "unlock", "\(vmid)"])
            _ = try? run(["vm", "destroy", "\(vmid)"])
        }
        for (_, path) in storageRoots { StorageCleanup.remove(path) }
        for (ceph, pool) in cephPools { ceph.removePool(pool) }
        for d in zfsDatasets {
            for attempt in 0..<10 {
                if (try? Command.capture(["zfs", "destroy", "-r", d]))?.status == 0 { break }
                if attempt < 9 { usleep(300_000) }
            }
        }
        try? FileManager.default.removeItem(atPath: configDir)
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// `Result` of an async throwing body (to clean up before rethrowing).
public func asyncResult<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}

/// A command running in the background, stdout and stderr to one file.
public final class BackgroundCommand: @unchecked Sendable {
    // @unchecked: used by the owning test only.
    public let process = Process()
    public let outputPath: String

    public init(_ argv: [String], outputPath: String) throws {
        self.outputPath = outputPath
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: outputPath) else { throw HarnessError("cannot write \(outputPath)") }
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = out
        try process.run()
        try out.close()
    }

    public var output: String { (try? FileSystem.readText(outputPath)) ?? "" }

    public func signal(_ sig: Int32) {
        if process.isRunning { Glibc.kill(process.processIdentifier, sig) }
    }

    /// Waits until the output contains `text`.
    public func waitForOutput(_ text: String, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while !output.contains(text) {
            if ContinuousClock.now >= deadline || !process.isRunning {
                throw HarnessError("no '\(text)' in the output of \(process.arguments ?? []): \(output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return output
    }

    /// The exit status; throws when it runs longer than `timeout`.
    public func waitForExit(timeout: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { throw HarnessError("\(process.arguments ?? []) still running after \(timeout)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        return process.terminationStatus
    }

    public func kill() async {
        signal(SIGKILL)
        _ = try? await waitForExit(timeout: .seconds(10))
    }

    /// SIGKILL and wait (up to 10 s) without a task: for teardown.
    public func killAndWait() {
        signal(SIGKILL)
        for _ in 0..<200 where process.isRunning { usleep(50_000) }
    }
}

/// The test guest's serial console, as the tests read it.
public enum Console {
    /// Polls the console log at `path` until a complete line starts with
    /// `prefix`; returns that line. Only lines already ended by a newline
    /// count: QEMU writes the serial console as the guest emits bytes, so the
    /// last line may still be half-written (CI once read "WRITER DONE 0000"
    /// of "WRITER DONE 00000010").
    public static func waitForLine(_ path: String, _ prefix: String, timeout: Duration, label: String = "") async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let text = try? FileSystem.readText(path), let line = completeLines(text).first(where: { $0.hasPrefix(prefix) }) {
                return line.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            if ContinuousClock.now >= deadline {
                let tail = ((try? FileSystem.readText(path)) ?? "").split(whereSeparator: \.isNewline).suffix(15).joined(separator: "\n")
                throw HarnessError("\(label)no '\(prefix)' in \(path) within \(timeout); console tail:\n\(tail)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The lines of `text` that a newline has ended.
    public static func completeLines(_ text: String) -> [Substring] {
        guard let end = text.lastIndex(where: \.isNewline) else { return [] }
        return text[..<end].split(whereSeparator: \.isNewline)
    }
}
