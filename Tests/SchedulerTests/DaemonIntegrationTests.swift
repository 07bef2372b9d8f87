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

        let daemon = try await DaemonRun(snapdumpd: snapdumpd, cfg: cfg, dir: dir, job: "every-minute")
        defer { daemon.killIfRunning() }
        let run = try #require(daemon.finished, "no run recorded; daemon log:\n\(daemon.log)")
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

        try await daemon.stop()
        #expect(daemon.log.contains("scheduler stopped"), "\(daemon.log)")
        #expect(try JobStateStore(directory: dir + "/etc/jobs").read("every-minute")?.isRunning == false)
    }

    /// The same with a repository storage: a backup made by hand first, then
    /// the daemon's scheduled run (`--storage r1 --prune-backups keep-last=1`)
    /// puts a new snapshot into the repository and prunes the hand-made one;
    /// `backup list r1` shows exactly the job's snapshot, and it restores to
    /// the disk's bytes.
    @Test(.enabled(if: Integration.required), .timeLimit(.minutes(3)))
    func daemonRunsARepositoryJobAndPrunes() async throws {
        let snapdump = SnapdumpBinary.binary, snapdumpd = SnapdumpBinary.path("snapdumpd")
        guard FileManager.default.isExecutableFile(atPath: snapdump), FileManager.default.isExecutableFile(atPath: snapdumpd) else {
            Issue.record("integration: \(snapdump) and \(snapdumpd) are missing (swift build first)")
            return
        }
        let dir = try Integration.scratchDirectory("daemon-repo")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = ["--config-dir", dir + "/etc"]
        let store = dir + "/store"
        func cli(_ args: [String]) throws -> String { try Command.run([snapdump] + args + cfg) }

        try FileSystem.createDirectory(store)
        _ = try cli(["storage", "add", "dir", "local", "--path", store, "--content", "images"])
        _ = try cli(["storage", "add", "repo", "r1", "--path", dir + "/repo"])
        _ = try cli(["repo", "init", "r1"])
        // 8 MiB: two chunks, one with data and one all zeros.
        let volid = try cli(["volume", "alloc", "local", "100", "8M"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let disk = store + "/images/100/vm-100-disk-0.raw"
        let data = Array(Array(repeating: Array("snapdumpd repository ".utf8), count: 40_000).joined())
        let f = try File.open(disk, O_WRONLY)
        try f.writeAll(data)
        try f.close()
        _ = try cli(["vm", "create", "100", "--name", "sched", "--scsi0", volid])
        _ = try cli(["backup", "100", "--mode", "stop", "--storage", "r1", "--quiet"])
        func listed() throws -> [String] {
            let json = try cli(["backup", "list", "r1", "--output-format", "json"])
            let rows = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]] ?? []
            return rows.compactMap { $0["volid"] as? String }.sorted()
        }
        let byHand = try listed()
        #expect(byHand.count == 1 && byHand[0].hasPrefix("r1:backup/vm/100/"), "\(byHand)")
        _ = try cli(["job", "add", "--id", "repo-minute", "--schedule", "*/1", "--vmid", "100", "--storage", "r1",
                     "--mode", "stop", "--prune-backups", "keep-last=1"])

        let daemon = try await DaemonRun(snapdumpd: snapdumpd, cfg: cfg, dir: dir, job: "repo-minute")
        defer { daemon.killIfRunning() }
        try await daemon.stop()

        let run = try #require(daemon.finished, "no run recorded; daemon log:\n\(daemon.log)")
        #expect(run.result == .ok, "\(run.error ?? "")")
        #expect(run.trigger == "schedule")
        let snapshot = try #require(run.archives.first)
        #expect(snapshot.hasPrefix("r1:backup/vm/100/"), "\(snapshot)")
        #expect(snapshot != byHand.first)
        // keep-last=1: the hand-made snapshot is gone, the job's is the only one listed.
        #expect(try listed() == [snapshot])
        #expect(!FileSystem.exists(dir + "/repo/" + String(try #require(byHand.first).dropFirst("r1:backup/".count))))
        let taskLog = try FileSystem.readText(try #require(run.taskLog))
        #expect(taskLog.contains("creating repository backup '\(snapshot)'"), "\(taskLog)")
        #expect(taskLog.contains("Backup job finished successfully"))
        #expect(taskLog.contains("prune older backups with retention: keep-last=1"), "\(taskLog)")
        #expect(taskLog.contains("pruned 1 backup(s) not covered by keep-retention policy"), "\(taskLog)")

        // The snapshot holds the disk: restored into a new VM, the bytes are the same.
        _ = try cli(["restore", snapshot, "101", "--storage", "local"])
        let restored = try FileSystem.readBytes(store + "/images/101/vm-101-disk-0.raw")
        #expect(restored.count == 8 << 20)
        #expect(Array(restored.prefix(data.count)) == data)
        #expect(restored.dropFirst(data.count).allSatisfy { $0 == 0 })
    }
}

/// snapdumpd started on a config directory, until `job`'s first run has a
/// result (at most 100 s: the first event is at the next minute's start).
struct DaemonRun {
    let process: Process
    let logPath: String
    let finished: JobState.Run?
    var log: String { (try? FileSystem.readText(logPath)) ?? "" }

    init(snapdumpd: String, cfg: [String], dir: String, job: String) async throws {
        logPath = dir + "/snapdumpd.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: snapdumpd)
        p.arguments = cfg
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        p.standardError = p.standardOutput
        try p.run()
        process = p
        let states = JobStateStore(directory: dir + "/etc/jobs")
        var run: JobState.Run?
        let deadline = Date().addingTimeInterval(100)
        while Date() < deadline {
            if let r = try? states.read(job)?.lastRun, r.result != nil { run = r; break }
            #expect(p.isRunning, "snapdumpd exited: \((try? FileSystem.readText(logPath)) ?? "")")
            if !p.isRunning { break }
            try await Task.sleep(nanoseconds: 500_000_000)
        }
        finished = run
        if run == nil, p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }

    /// For a test that ends early: never leave a daemon behind.
    func killIfRunning() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    /// SIGTERM: the daemon stops within 30 s with status 0 (SIGKILL otherwise).
    func stop() async throws {
        let p = process
        kill(p.processIdentifier, SIGTERM)
        let stopBy = Date().addingTimeInterval(30)
        while p.isRunning && Date() < stopBy { try await Task.sleep(nanoseconds: 100_000_000) }
        #expect(!p.isRunning, "snapdumpd did not stop on SIGTERM")
        if p.isRunning { kill(p.processIdentifier, SIGKILL); return }
        #expect(p.terminationReason == .exit && p.terminationStatus == 0)
    }
}
