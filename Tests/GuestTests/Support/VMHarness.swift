#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// The built `snapdump` executable the guest CLI tests drive (`SnapdumpBinary`).
enum GuestCLIBinary {
    static var path: String { SnapdumpBinary.binary }

    static func require() throws {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TestFailure("snapdump binary missing at \(path) (swift build first, or set SNAPDUMP_BIN)")
        }
    }
}

/// The storages the guest CLI tests boot on, each backed by a fixture.
enum TestStorageKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case dirRaw, dirQcow2, dirReflinkXFS, btrfs, zfspool, rbd

    var testDescription: String { rawValue }

    /// The fixture variable the kind needs.
    var fixture: String {
        switch self {
        case .dirRaw, .dirQcow2: return "SNAPDUMP_TEST_DIR"
        case .dirReflinkXFS: return "SNAPDUMP_TEST_XFS"
        case .btrfs: return "SNAPDUMP_TEST_BTRFS"
        case .zfspool: return "SNAPDUMP_TEST_ZPOOL"
        case .rbd: return "SNAPDUMP_TEST_CEPH_CONF"
        }
    }

    var imageFormat: String { self == .dirQcow2 ? "qcow2" : "raw" }
}

/// One test's snapdump world: a config dir in /tmp (short: unix socket
/// paths), storages in fresh subdirectories (or a fresh ZFS dataset) of the
/// fixtures, and the VMs it starts through the CLI. `run` tears everything
/// down on every path: each QEMU it started is SIGKILLed by its verified pid,
/// and the storages' directories or dataset — every volume in them — are
/// removed.
final class VMHarness: @unchecked Sendable {
    // @unchecked: used by one test at a time, from its own task.
    let configDir: String
    let paths: SnapdumpPaths
    let tag: String
    private(set) var storageRoots: [(id: String, path: String, kind: String)] = []
    private(set) var zfsDatasets: [String] = []
    private(set) var cephPools: [(CephFixture, String)] = []
    private(set) var startedPIDs: [(vmid: Int, pid: Int32)] = []

    init(_ label: String) throws {
        try GuestCLIBinary.require()
        configDir = try scratch("vmh-\(label)")
        paths = SnapdumpPaths(configDir: configDir, runDir: configDir + "/run")
        tag = "vmh-\(label)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    static func run(_ label: String, _ body: (VMHarness) async throws -> Void) async throws {
        let h = try VMHarness(label)
        do {
            try await body(h)
        } catch {
            await h.tearDown()
            throw error
        }
        await h.tearDown()
    }

    // MARK: Storages

    /// Adds a storage `id` of `kind` in a fresh subdirectory (dataset) of its fixture.
    func addStorage(_ id: String, _ kind: TestStorageKind) throws {
        let base = try Integration.require(kind.fixture)
        switch kind {
        case .dirRaw, .dirQcow2, .dirReflinkXFS:
            let dir = "\(base)/\(tag)-\(id)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            storageRoots.append((id, dir, "dir"))
            var args = ["storage", "add", "dir", id, "--path", dir]
            if kind == .dirQcow2 { args += ["--format", "qcow2"] }
            if kind == .dirReflinkXFS { args += ["--reflink", "1"] }
            try mustRun(args)
        case .btrfs:
            let dir = "\(base)/\(tag)-\(id)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            storageRoots.append((id, dir, "btrfs"))
            try mustRun(["storage", "add", "btrfs", id, "--path", dir])
        case .zfspool:
            let dataset = "\(base)/\(tag)-\(id)"
            try Command.run(["zfs", "create", dataset])
            zfsDatasets.append(dataset)
            try mustRun(["storage", "add", "zfspool", id, "--pool", dataset])
        case .rbd:
            let ceph = try CephFixture.require()
            let pool = "\(tag)-\(id)"
            try ceph.createPool(pool)
            cephPools.append((ceph, pool))
            try mustRun(ceph.storageAddArguments(id, pool: pool))
        }
    }

    /// A plain `dir` storage at `path` (created), removed at teardown.
    func addDirStorage(_ id: String, under base: String) throws {
        let dir = "\(base)/\(tag)-\(id)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        storageRoots.append((id, dir, "dir"))
        try mustRun(["storage", "add", "dir", id, "--path", dir])
    }

    /// Every file below the storages' directories and datasets (to see what a command left).
    func storageFiles() -> [String] {
        var roots = storageRoots.map(\.path)
        for (ceph, pool) in cephPools { ceph.removePool(pool) }
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

    /// Runs `snapdump ARGS --config-dir DIR`.
    @discardableResult
    func run(_ args: [String]) throws -> Command.Output {
        try Command.capture([GuestCLIBinary.path] + args + ["--config-dir", configDir])
    }

    /// Runs snapdump and fails unless it exits 0; returns stdout.
    @discardableResult
    func mustRun(_ args: [String]) throws -> String {
        let o = try run(args)
        guard o.status == 0 else {
            throw TestFailure("snapdump \(args.joined(separator: " ")) exited \(o.status): \(o.stderr)\(o.stdout)")
        }
        return o.stdout
    }

    /// Runs a command that must fail with one clear error line naming
    /// `mentioning`, and must leave the VM config byte-for-byte as it was.
    func expectRefused(_ args: [String], vmid: Int?, mentioning: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = vmid.flatMap { try? Data(contentsOf: URL(fileURLWithPath: paths.vmConfig($0))) }
        let o = try run(args)
        let lines = o.stderr.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        #expect(o.status != 0, "snapdump \(args.joined(separator: " ")) succeeded: \(o.stdout)", sourceLocation: sourceLocation)
        #expect(lines.count == 1, "expected one error line from \(args.joined(separator: " ")), got:\n\(o.stderr)", sourceLocation: sourceLocation)
        for m in mentioning {
            #expect(o.stderr.contains(m), "error of \(args.joined(separator: " ")) does not name '\(m)': \(o.stderr)", sourceLocation: sourceLocation)
        }
        if let vmid {
            let after = try? Data(contentsOf: URL(fileURLWithPath: paths.vmConfig(vmid)))
            #expect(after == before, "snapdump \(args.joined(separator: " ")) changed \(paths.vmConfig(vmid))", sourceLocation: sourceLocation)
        }
    }

    func configText(_ vmid: Int) throws -> String { try FileSystem.readText(paths.vmConfig(vmid)) }

    func config(_ vmid: Int) throws -> VMConfig { try VMConfig.load(vmid: vmid, paths: paths) }

    /// The path of a volume (`snapdump volume path`).
    func volumePath(_ volid: String) throws -> String {
        try mustRun(["volume", "path", volid]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts `snapdump ARGS --config-dir DIR` in the background (killed at teardown if still running).
    func spawn(_ args: [String]) throws -> BackgroundCommand {
        let c = try BackgroundCommand([GuestCLIBinary.path] + args + ["--config-dir", configDir], outputPath: configDir + "/spawn-\(children.count).out")
        children.append(c)
        return c
    }

    private(set) var children: [BackgroundCommand] = []

    // MARK: VMs

    /// `vm create` of the test guest with one `scsi0` disk on `storage`.
    func createGuest(_ vmid: Int, storage: String, size: String = "64M", guest: (kernel: String, initrd: String, checker: String),
                     append: String = "console=ttyS0 quiet panic=-1 snapdump.interval_ms=10") throws {
        try mustRun(["vm", "create", String(vmid), "--memory", "256", "--scsi0", "\(storage):\(size)",
                     "--kernel", guest.kernel, "--initrd", guest.initrd, "--append", append])
    }

    /// `vm start`; remembers the verified pid for teardown.
    func start(_ vmid: Int) throws {
        try mustRun(["vm", "start", String(vmid)])
        guard let pid = pid(vmid) else { throw TestFailure("VM \(vmid) started but has no live QEMU") }
        startedPIDs.append((vmid, pid))
    }

    /// The live QEMU pid of `vmid`, verified against its cmdline.
    func pid(_ vmid: Int) -> Int32? {
        guard let pid = ProcessTable.readPidFile(paths.pidFile(vmid)),
              ProcessTable.isAlive(pid, mentioning: paths.qmpSocket(vmid)) else { return nil }
        return pid
    }

    /// Waits until the QEMU with `pid` is gone.
    func waitForExit(_ vmid: Int, pid: Int32, timeout: Duration) async -> Bool {
        await ProcessTable.waitForExit(pid, mentioning: paths.qmpSocket(vmid), timeout: timeout)
    }

    func consoleLog(_ vmid: Int) -> String { paths.consoleLog(vmid) }

    /// Polls the console log until a line starts with `prefix`.
    @discardableResult
    func waitForConsole(_ vmid: Int, _ prefix: String, timeout: Duration) async throws -> String {
        try await Console.waitForLine(consoleLog(vmid), prefix, timeout: timeout, label: "VM \(vmid): ")
    }

    /// Sequence numbers of complete `HB <seq>` lines so far.
    func heartbeats(_ vmid: Int) -> [Int] {
        Heartbeats.parse((try? FileSystem.readText(consoleLog(vmid))) ?? "")
    }

    func lastHeartbeat(_ vmid: Int) -> Int { heartbeats(vmid).last ?? 0 }

    /// Waits until a heartbeat above `seq` arrives; returns it.
    @discardableResult
    func waitForHeartbeat(_ vmid: Int, above seq: Int, timeout: Duration = .seconds(30)) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        while true {
            let last = lastHeartbeat(vmid)
            if last > seq { return last }
            if ContinuousClock.now >= deadline { throw TestFailure("VM \(vmid): no heartbeat above \(seq) within \(timeout) (last \(last))") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Boots `vmid` and waits for its workload's first heartbeats.
    func startAndWaitForHeartbeats(_ vmid: Int) async throws {
        try start(vmid)
        try await waitForConsole(vmid, "SNAPDUMP-GUEST READY", timeout: .seconds(120))
        try await waitForHeartbeat(vmid, above: 5)
    }

    // MARK: Records

    struct RecordCheck {
        var output: String
        var status: Int32
        var consistent: Bool { status == 0 && output.contains("status=consistent\n") }
        var lastContiguous: Int { value("last_contiguous") ?? -1 }
        func value(_ key: String) -> Int? {
            output.split(separator: "\n").first { $0.hasPrefix(key + "=") }.flatMap { Int($0.dropFirst(key.count + 1)) }
        }
    }

    /// Runs `snapdump-record-check` on a raw image, or on a raw copy of a qcow2 one.
    func checkRecords(_ image: String, format: String, checker: String) throws -> RecordCheck {
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

    // MARK: Teardown

    func tearDown() async {
        for c in children { await c.kill() }
        // Every QEMU this test started, by its verified pid; then any other
        // QEMU still serving one of this config dir's sockets.
        var targets = startedPIDs
        for vmid in (try? VMConfig.list(paths: paths)) ?? [] {
            if let p = pid(vmid), !targets.contains(where: { $0.pid == p }) { targets.append((vmid, p)) }
        }
        for (vmid, pid) in targets where ProcessTable.signal(pid, SIGKILL, ifMentioning: paths.qmpSocket(vmid)) {
            _ = await ProcessTable.waitForExit(pid, mentioning: paths.qmpSocket(vmid), timeout: .seconds(10))
        }
        GuestCleanup.killQEMUs(runDir: paths.runDir)
        for (_, path, _) in storageRoots { StorageCleanup.remove(path) }
        for (ceph, pool) in cephPools { ceph.removePool(pool) }
        for d in zfsDatasets {
            for attempt in 0..<10 {
                let o = try? Command.capture(["zfs", "destroy", "-r", d])
                if o?.status == 0 { break }
                if attempt < 9 { try? await Task.sleep(for: .milliseconds(300)) }
            }
        }
        removeTree(configDir)
    }
}

/// `Result` of an async throwing body (to clean up before rethrowing).
func asyncResult<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}

/// A command running in the background, stdout and stderr to one file.
final class BackgroundCommand: @unchecked Sendable {
    // @unchecked: used by the owning test only.
    let process = Process()
    let outputPath: String

    init(_ argv: [String], outputPath: String) throws {
        self.outputPath = outputPath
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: outputPath) else { throw TestFailure("cannot write \(outputPath)") }
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = out
        try process.run()
        try out.close()
    }

    var output: String { (try? FileSystem.readText(outputPath)) ?? "" }

    func signal(_ sig: Int32) {
        if process.isRunning { Glibc.kill(process.processIdentifier, sig) }
    }

    /// Waits until the output contains `text`.
    func waitForOutput(_ text: String, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while !output.contains(text) {
            if ContinuousClock.now >= deadline || !process.isRunning {
                throw TestFailure("no '\(text)' in the output of \(process.arguments ?? []): \(output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return output
    }

    /// The exit status; throws when it runs longer than `timeout`.
    func waitForExit(timeout: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { throw TestFailure("\(process.arguments ?? []) still running after \(timeout)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        return process.terminationStatus
    }

    func kill() async {
        signal(SIGKILL)
        _ = try? await waitForExit(timeout: .seconds(10))
    }
}
