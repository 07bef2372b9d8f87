#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Scheduler

/// The real snapdumpd binary with a job scheduled every minute (`*/1`)
/// against a stopped VM with a raw disk on a dir storage: the archive
/// appears with its job state and task log, then SIGTERM ends the daemon
/// with status 0. Runs with SNAPDUMP_INTEGRATION=1 (then missing binaries
/// fail it); takes up to about 70 s, waiting for the next minute.
@Suite(.serialized) struct DaemonIntegrationTests {
    @Test(.enabled(if: Integration.required), .timeLimit(.minutes(3)))
    func daemonRunsAJobEveryMinute() async throws {
        let snapdump = SnapdumpBinary.binary, snapdumpd = SnapdumpBinary.path("snapdumpd")
        guard FileManager.default.isExecutableFile(atPath: snapdump), FileManager.default.isExecutableFile(atPath: snapdumpd) else {
            Issue.record("integration: \(snapdump) and \(snapdumpd) are missing (swift build first)")
            return
        }
        let dir = try Integration.scratchDirectory("daemon")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = ["--config-dir", dir + "/etc"]
        let store = dir + "/store"
        func cli(_ args: [String]) throws -> String { try Command.run([snapdump] + args + cfg) }

        try FileSystem.createDirectory(store)
        _ = try cli(["storage", "add", "dir", "local", "--path", store, "--content", "images,backup"])
        let volid = try cli(["volume", "alloc", "local", "100", "4M"]).trimmingCharacters(in: .whitespacesAndNewlines)
        // Some recognisable data in the first MiB of the raw disk.
        let disk = store + "/images/100/vm-100-disk-0.raw"
        let f = try File.open(disk, O_WRONLY)
        try f.writeAll(Array(repeating: Array("snapdumpd integration ".utf8), count: 40_000).flatMap { $0 })
        try f.close()
        _ = try cli(["vm", "create", "100", "--name", "sched", "--scsi0", volid])
        _ = try cli(["job", "add", "--id", "every-minute", "--schedule", "*/1", "--vmid", "100", "--storage", "local",
                     "--mode", "stop", "--compress", "zstd", "--comment", "integration"])

        let daemonLog = dir + "/snapdumpd.log"
        FileManager.default.createFile(atPath: daemonLog, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: snapdumpd)
        p.arguments = cfg
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: daemonLog))
        p.standardError = p.standardOutput
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }

        // The first event is at the next minute's start: wait up to 100 s.
        let states = JobStateStore(directory: dir + "/etc/jobs")
        var finished: JobState.Run?
        let deadline = Date().addingTimeInterval(100)
        while Date() < deadline {
            if let r = try? states.read("every-minute")?.lastRun, r.result != nil { finished = r; break }
            #expect(p.isRunning, "snapdumpd exited: \((try? FileSystem.readText(daemonLog)) ?? "")")
            if !p.isRunning { break }
            try await Task.sleep(nanoseconds: 500_000_000)
        }
        let run = try #require(finished, "no run recorded; daemon log:\n\((try? FileSystem.readText(daemonLog)) ?? "")")
        #expect(run.result == .ok, "\(run.error ?? "")")
        #expect(run.trigger == "schedule")
        let archive = try #require(run.archives.first)
        #expect(archive.hasPrefix(store + "/dump/vzdump-qemu-100-") && archive.hasSuffix(".vma.zst"))
        #expect(FileSystem.exists(archive))
        let taskLog = try FileSystem.readText(try #require(run.taskLog))
        #expect(taskLog.contains("INFO: job 'every-minute' started (schedule), schedule '*/1'"))
        #expect(taskLog.contains("Backup job finished successfully"))
        #expect(taskLog.contains("backup mode: stop"))
        // The minute-aligned start: the event time is a whole minute.
        #expect(Int(run.start.timeIntervalSince1970) % 60 == 0)

        kill(p.processIdentifier, SIGTERM)
        let stopBy = Date().addingTimeInterval(30)
        while p.isRunning && Date() < stopBy { try await Task.sleep(nanoseconds: 100_000_000) }
        #expect(!p.isRunning, "snapdumpd did not stop on SIGTERM")
        if !p.isRunning {
            #expect(p.terminationReason == .exit && p.terminationStatus == 0)
        }
        let log = try FileSystem.readText(daemonLog)
        #expect(log.contains("scheduler stopped"), "\(log)")
        #expect(try states.read("every-minute")?.isRunning == false)
    }
}
