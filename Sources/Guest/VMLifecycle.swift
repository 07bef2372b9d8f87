#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// Starts, stops, pauses and inspects VMs, Proxmox `qm` style.
///
/// A running VM is a daemonized QEMU with a pidfile; its pid is trusted only
/// while /proc/<pid>/cmdline still mentions the VM's QMP socket, so a
/// recycled pid or a zombie never counts as running and is never signalled.
/// Every command except `status` and `unlock` refuses a VM whose config has
/// a `lock:` (unless the caller holds that very lock, `allowLock`). Commands
/// that change state take a per-VM file lock, so two snapdump processes do
/// not start the same VM twice. Every wait has a timeout.
public struct VMLifecycle: Sendable {
    public var paths: SnapdumpPaths
    public var qemuBinary: String
    public var environment: [String: String]

    public init(paths: SnapdumpPaths, qemuBinary: String = "qemu-system-x86_64",
                environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.paths = paths
        self.qemuBinary = qemuBinary
        self.environment = environment
    }

    /// QEMU's start-up messages (stderr before it daemonizes).
    public func startLog(_ vmid: Int) -> String { "\(paths.qemuRunDir)/\(vmid).qemu.log" }

    // MARK: Start

    /// Starts the VM detached and returns the QEMU pid once its QMP socket
    /// answers. `disks` are the config's drives resolved to paths. Refuses a
    /// running or locked VM; on any failure after QEMU was launched, the
    /// process is killed and its files removed.
    @discardableResult
    public func start(vmid: Int, disks: [ResolvedDisk], allowLock: String? = nil, timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await withVMLock(vmid) {
            let config = try loadUnlocked(vmid, allowLock: allowLock)
            if let pid = runningPID(vmid) {
                throw GuestError(vmid: vmid, .alreadyRunning, "VM \(vmid) is already running (pid \(pid))")
            }
            try cleanupFiles(vmid)
            try wrap(vmid, "cannot create \(paths.qemuRunDir)") { try FileSystem.createDirectory(paths.qemuRunDir) }
            for (what, path) in [("kernel", config.kernel), ("initrd", config.initrd)] {
                if let path, !FileSystem.exists(path) {
                    throw GuestError(vmid: vmid, .missingFile, "VM \(vmid): \(what) '\(path)' does not exist")
                }
            }
            // An RBD image has no local path; its storage checked that it exists when resolving it.
            for d in disks where RBDImageSpec(d.path) == nil && !FileSystem.exists(d.path) {
                throw GuestError(vmid: vmid, .missingFile, "VM \(vmid): disk \(d.key) '\(d.path)' does not exist")
            }
            let accel = try await AcceleratorProbe.resolve(paths: paths, environment: environment, qemuBinary: qemuBinary)
            let argv = try QEMUCommandLine(config: config, disks: disks, paths: paths, accelerator: accel.accelerator,
                                           qemuBinary: qemuBinary).arguments()
            let deadline = ContinuousClock.now + timeout
            do {
                try await launch(vmid, argv, deadline: deadline)
                guard let pid = ProcessTable.readPidFile(paths.pidFile(vmid)),
                      ProcessTable.isAlive(pid, mentioning: paths.qmpSocket(vmid)) else {
                    throw GuestError(vmid: vmid, .startFailed, "VM \(vmid): QEMU exited right after starting\(logExcerpt(vmid))")
                }
                let qmp = try await connectWithRetry(vmid, deadline: deadline)
                await qmp.close()
                return pid
            } catch {
                await killAndClean(vmid)
                throw error
            }
        }
    }

    /// Runs the daemonizing QEMU; its parent exits once the VM is initialized.
    private func launch(_ vmid: Int, _ argv: [String], deadline: Deadline) async throws {
        let logPath = startLog(vmid)
        try wrap(vmid, "cannot write \(logPath)") { try FileSystem.writeAtomically(logPath, "") }
        let parent: pid_t
        do {
            parent = try Spawn.start(argv, environment: environment, outputPath: logPath)
        } catch {
            throw GuestError(vmid: vmid, .startFailed, "VM \(vmid): cannot run \(argv[0])", cause: error as? Spawn.Failure)
        }
        guard let exit = await Spawn.wait(parent, until: deadline) else {
            await Spawn.killAndReap(parent)
            throw GuestError(vmid: vmid, .startFailed, "VM \(vmid): QEMU did not finish starting in time\(logExcerpt(vmid))")
        }
        if exit != .exited(0) {
            let how: String
            switch exit {
            case .exited(let code): how = "exit \(code)"
            case .signaled(let sig): how = "signal \(sig)"
            }
            throw GuestError(vmid: vmid, .startFailed, "VM \(vmid): QEMU failed to start (\(how))\(logExcerpt(vmid))")
        }
    }

    private func connectWithRetry(_ vmid: Int, deadline: Deadline) async throws -> QMPClient {
        var lastError: any Error = QMPError.timeout("connect")
        repeat {
            do {
                let qmp = try await QMPClient.connect(path: paths.qmpSocket(vmid), timeout: min(deadline.remaining, .seconds(5)))
                _ = try await qmp.execute("query-status", timeout: min(deadline.remaining, .seconds(5)))
                return qmp
            } catch {
                lastError = error
                try? await Task.sleep(for: .milliseconds(100))
            }
        } while !deadline.hasPassed
        throw GuestError(vmid: vmid, .startFailed, "VM \(vmid): QMP socket did not answer", cause: GuestError.Detail("\(lastError)"))
    }

    private func logExcerpt(_ vmid: Int) -> String {
        guard let text = try? FileSystem.readText(startLog(vmid)) else { return "" }
        let lines = text.split(separator: "\n").filter { !$0.contains("terminating on signal") }.suffix(5)
        return lines.isEmpty ? "" : ": " + lines.joined(separator: "; ")
    }

    // MARK: Status

    /// running / paused / stopped, with pid and uptime. Works on locked VMs.
    /// Asks QEMU's status monitor, which no one holds for long, so it answers
    /// at once while a backup holds the main one; a QEMU started without it
    /// (by an older snapdump) is asked on the main monitor, waiting up to 3 s.
    public func status(vmid: Int) async throws -> VMStatus {
        let config = try VMConfig.load(vmid: vmid, paths: paths)
        var s = VMStatus(vmid: vmid, state: .stopped, lock: config.lock, name: config.name)
        guard let pid = runningPID(vmid) else { return s }
        s.pid = pid
        s.uptime = ProcessTable.uptime(pid)
        s.state = .running
        let monitor = FileSystem.exists(paths.qmpStatusSocket(vmid)) ? paths.qmpStatusSocket(vmid) : paths.qmpSocket(vmid)
        if let qmp = try? await QMPClient.connect(path: monitor, timeout: .seconds(3)) {
            if let r = try? await qmp.execute("query-status", timeout: .seconds(3)), let st = r["status"]?.stringValue {
                s.qmpStatus = st
                s.state = st == "running" ? .running : .paused
            }
            await qmp.close()
        }
        return s
    }

    /// The verified pid of the VM's QEMU, or nil when it is not running.
    public func runningPID(_ vmid: Int) -> Int32? {
        let marker = paths.qmpSocket(vmid)
        if let pid = ProcessTable.readPidFile(paths.pidFile(vmid)), ProcessTable.isAlive(pid, mentioning: marker) {
            return pid
        }
        // The pidfile may be gone while QEMU still runs: look for it.
        if FileSystem.exists(marker) { return ProcessTable.find(mentioning: marker).first }
        return nil
    }

    /// A QMP connection to the running VM. QEMU serves one QMP client at a
    /// time: close it when done.
    public func connectQMP(vmid: Int, timeout: Duration = .seconds(5)) async throws -> QMPClient {
        guard runningPID(vmid) != nil else { throw GuestError(vmid: vmid, .notRunning, "VM \(vmid) is not running") }
        do {
            return try await QMPClient.connect(path: paths.qmpSocket(vmid), timeout: timeout)
        } catch {
            throw GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot connect to QMP", cause: error as? QMPError)
        }
    }

    /// The guest-agent client for the VM (connects on first use).
    public func guestAgent(vmid: Int) -> GuestAgentClient {
        GuestAgentClient(socketPath: paths.guestAgentSocket(vmid))
    }

    // MARK: Pause, resume

    /// QMP `stop`: the guest's CPUs halt, the process stays.
    public func suspend(vmid: Int, allowLock: String? = nil) async throws {
        try await qmpCommand(vmid, "stop", allowLock: allowLock)
    }

    /// QMP `cont`.
    public func resume(vmid: Int, allowLock: String? = nil) async throws {
        try await qmpCommand(vmid, "cont", allowLock: allowLock)
    }

    private func qmpCommand(_ vmid: Int, _ command: String, allowLock: String?) async throws {
        try await withVMLock(vmid) {
            _ = try loadUnlocked(vmid, allowLock: allowLock)
            let qmp = try await connectQMP(vmid: vmid)
            do {
                _ = try await qmp.execute(command, timeout: .seconds(10))
                await qmp.close()
            } catch {
                await qmp.close()
                throw GuestError(vmid: vmid, .qmp, "VM \(vmid): '\(command)' failed", cause: error as? QMPError)
            }
        }
    }

    // MARK: Stop, shutdown

    /// Hard stop: QMP `quit`, then SIGKILL to the verified pid if QEMU is
    /// still there after `timeout`. A VM that is not running is fine.
    public func stop(vmid: Int, timeout: Duration = .seconds(5), allowLock: String? = nil) async throws {
        try await withVMLock(vmid) {
            _ = try loadUnlocked(vmid, allowLock: allowLock)
            try await hardStop(vmid, timeout: timeout)
        }
    }

    /// ACPI powerdown (`system_powerdown`), then waits up to `timeout` for
    /// QEMU to exit. On timeout: a hard stop with `forceStop`, else
    /// `GuestError(.timeout)` and the VM keeps running.
    public func shutdown(vmid: Int, timeout: Duration = .seconds(60), forceStop: Bool = false, allowLock: String? = nil) async throws {
        try await withVMLock(vmid) {
            _ = try loadUnlocked(vmid, allowLock: allowLock)
            guard let pid = runningPID(vmid) else {
                try cleanupFiles(vmid)
                return
            }
            let marker = paths.qmpSocket(vmid)
            do {
                let qmp = try await QMPClient.connect(path: marker, timeout: .seconds(5))
                let result: Result<JSONValue, any Error>
                do { result = .success(try await qmp.execute("system_powerdown", timeout: .seconds(5))) } catch { result = .failure(error) }
                await qmp.close()
                _ = try result.get()
            } catch {
                if !forceStop {
                    throw GuestError(vmid: vmid, .qmp, "VM \(vmid): cannot send ACPI powerdown", cause: error as? QMPError)
                }
            }
            if await ProcessTable.waitForExit(pid, mentioning: marker, timeout: timeout) {
                try cleanupFiles(vmid)
                return
            }
            guard forceStop else {
                throw GuestError(vmid: vmid, .timeout, "VM \(vmid) did not shut down within \(timeout.shortDescription)")
            }
            try await hardStop(vmid, timeout: .seconds(3))
        }
    }

    private func hardStop(_ vmid: Int, timeout: Duration) async throws {
        guard let pid = runningPID(vmid) else {
            try cleanupFiles(vmid)
            return
        }
        let marker = paths.qmpSocket(vmid)
        if let qmp = try? await QMPClient.connect(path: marker, timeout: .seconds(2)) {
            _ = try? await qmp.execute("quit", timeout: .seconds(2))
            await qmp.close()
        }
        if !(await ProcessTable.waitForExit(pid, mentioning: marker, timeout: timeout, honoringCancellation: false)) {
            ProcessTable.signal(pid, SIGKILL, ifMentioning: marker)
            if !(await ProcessTable.waitForExit(pid, mentioning: marker, timeout: .seconds(5), honoringCancellation: false)) {
                throw GuestError(vmid: vmid, .timeout, "VM \(vmid): QEMU (pid \(pid)) survived SIGKILL")
            }
        }
        try cleanupFiles(vmid)
    }

    /// Kills a half-started VM and removes its files; best effort.
    private func killAndClean(_ vmid: Int) async {
        let marker = paths.qmpSocket(vmid)
        var pids = ProcessTable.find(mentioning: marker)
        if let pid = ProcessTable.readPidFile(paths.pidFile(vmid)), !pids.contains(pid) { pids.append(pid) }
        for pid in pids where ProcessTable.signal(pid, SIGKILL, ifMentioning: marker) {
            _ = await ProcessTable.waitForExit(pid, mentioning: marker, timeout: .seconds(5))
        }
        try? cleanupFiles(vmid)
    }

    // MARK: Locks

    /// Sets `lock: <name>` (for backup, migrate, …); refuses a VM that is
    /// already locked.
    public func lock(vmid: Int, _ name: String) async throws {
        guard VMConfig.lockValues.contains(name) else {
            throw GuestError(vmid: vmid, .invalidConfig, "VM \(vmid): unknown lock '\(name)'")
        }
        try await withVMLock(vmid) {
            var config = try loadUnlocked(vmid, allowLock: nil)
            config.lock = name
            try await save(config)
        }
    }

    /// Clears the config's `lock:` (Proxmox `qm unlock`); fine when unlocked.
    public func unlock(vmid: Int) async throws {
        try await withVMLock(vmid) {
            var config = try VMConfig.load(vmid: vmid, paths: paths)
            guard config.lock != nil else { return }
            config.lock = nil
            try await save(config)
        }
    }

    /// Removes the QMP and agent sockets and the pidfile of a VM that is not
    /// running (left by a crash or a kill). Returns whether anything was
    /// removed; does nothing while the VM runs.
    @discardableResult
    public func cleanupStale(vmid: Int) throws -> Bool {
        guard runningPID(vmid) == nil else { return false }
        let files = [paths.qmpSocket(vmid), paths.qmpStatusSocket(vmid), paths.guestAgentSocket(vmid), paths.pidFile(vmid)]
        let present = files.filter(FileSystem.exists)
        try cleanupFiles(vmid)
        return !present.isEmpty
    }

    private func cleanupFiles(_ vmid: Int) throws {
        for f in [paths.qmpSocket(vmid), paths.qmpStatusSocket(vmid), paths.guestAgentSocket(vmid), paths.pidFile(vmid)] {
            try wrap(vmid, "cannot remove stale \(f)") { try FileSystem.remove(f) }
        }
    }

    // MARK: Helpers

    /// Saves a config (fsync, rename, fsync of the directory) off the cooperative pool.
    func save(_ config: VMConfig) async throws {
        let paths = self.paths
        do {
            try await Blocking.run("save-config") { try config.save(paths: paths) }
        } catch let e as SystemError {
            throw GuestError(vmid: config.vmid, .system, "VM \(config.vmid): cannot write config", cause: e)
        }
    }

    func loadUnlocked(_ vmid: Int, allowLock: String?) throws -> VMConfig {
        let config = try VMConfig.load(vmid: vmid, paths: paths)
        if let lock = config.lock, lock != allowLock { throw GuestError.locked(vmid, lock) }
        return config
    }

    /// Runs `body` holding `<lockDir>/qemu-<vmid>.lock` (waits up to 10 s).
    func withVMLock<T: Sendable>(_ vmid: Int, _ body: () async throws -> T) async throws -> T {
        let path = "\(paths.lockDir)/qemu-\(vmid).lock"
        let lock: FileLock
        do {
            lock = try await Blocking.run("vm-lock") { try FileLock.acquire(path, timeout: 10) }
        } catch {
            throw GuestError(vmid: vmid, .timeout, "VM \(vmid): cannot take lock \(path)", cause: GuestError.Detail("\(error)"))
        }
        defer { lock.unlock() }
        return try await body()
    }

    private func wrap<T>(_ vmid: Int, _ what: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as GuestError {
            throw e
        } catch let e as SystemError {
            throw GuestError(vmid: vmid, .system, "VM \(vmid): \(what)", cause: e)
        } catch {
            throw GuestError(vmid: vmid, .system, "VM \(vmid): \(what)", cause: GuestError.Detail("\(error)"))
        }
    }
}
