#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpConfig
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

/// snapdumpd runs its scheduler on Swift's cooperative pool, which has one
/// thread per core (two here). Work that blocks — waiting for the global lock
/// (up to three hours), a hook script — must run on threads of its own, or a
/// few waiting jobs stall every other task of the process.
@Suite("Blocking work stays off the cooperative pool", .serialized)
struct BlockingWorkTests {
    /// More jobs than the pool has threads.
    static let jobs = ProcessInfo.processInfo.activeProcessorCount + 2

    static func world(_ label: String) throws -> (dir: String, paths: SnapdumpPaths) {
        let dir = try Integration.scratchDirectory(label)
        try FileSystem.createDirectory(dir + "/store")
        for args in [["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"],
                     ["vm", "create", "100", "--scsi0", "local:1M"]] {
            let r = try SnapdumpBinary.run(args, configDir: dir + "/etc")
            try #require(r.status == 0, "\(args): \(r)")
        }
        return (dir, SnapdumpPaths(configDir: dir + "/etc", runDir: dir + "/run"))
    }

    static func startJobs(paths: SnapdumpPaths, lockwait: Double, script: String? = nil) -> [(Interrupt, Task<Void, any Error>)] {
        (0..<jobs).map { _ in
            let interrupt = Interrupt()
            let task = Task.detached {
                var options = BackupOptions()
                options.vmids = [100]
                options.target = .storage("local")
                options.mode = .stop
                let job = BackupJob(options: options, paths: paths, log: TaskLog(echo: false), interrupt: interrupt)
                job.lockwait = lockwait
                job.settings.script = script
                _ = try await job.run()
            }
            return (interrupt, task)
        }
    }

    /// How long a 1 s sleep of this task takes: its wake-up needs a pool thread.
    static func poolDelay() async throws -> Duration {
        let t0 = ContinuousClock.now
        try await Task.sleep(for: .seconds(1))
        return ContinuousClock.now - t0
    }

    @Test func jobsWaitingForTheGlobalLockLeaveThePoolFree() async throws {
        let (dir, paths) = try Self.world("blk-lock")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let held = try FileLock.acquire(paths.backupLock, timeout: 0)
        defer { held.unlock() }
        // lockwait 0.25 min: blocking the pool, the jobs would hold it for 15 s.
        let running = Self.startJobs(paths: paths, lockwait: 0.25)
        let delay = try await Self.poolDelay()
        #expect(delay < .seconds(4), "a 1 s sleep took \(delay) while \(Self.jobs) jobs waited for the lock")
        for (interrupt, _) in running { interrupt.raise(SIGTERM) }
        for (_, task) in running {
            do {
                try await task.value
                Issue.record("a job ran although the global lock was held")
            } catch is Interrupt.Interrupted {
            } catch {
                Issue.record("expected the job to be interrupted while waiting for the lock, got \(error)")
            }
        }
    }

    @Test func hookScriptsRunOffThePool() async throws {
        let (dir, paths) = try Self.world("blk-hook")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = dir + "/hook.sh"
        try "#!/bin/sh\n[ \"$1\" = job-init ] && sleep 6\nexit 0\n".write(toFile: script, atomically: false, encoding: .utf8)
        chmod(script, 0o700)
        let held = try FileLock.acquire(paths.backupLock, timeout: 0)
        defer { held.unlock() }
        let running = Self.startJobs(paths: paths, lockwait: 0.25, script: script)
        let delay = try await Self.poolDelay()
        #expect(delay < .seconds(4), "a 1 s sleep took \(delay) while \(Self.jobs) hook scripts ran")
        for (interrupt, _) in running { interrupt.raise(SIGTERM) }
        for (_, task) in running { _ = try? await task.value }
    }
}
