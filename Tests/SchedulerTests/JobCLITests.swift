import ArgumentParser
import Foundation
import Testing
import Backup
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Scheduler
@testable import SnapdumpCLI

/// The `job`, `schedule` and `backup` commands, parsed and run in-process.
@Suite struct JobCLITests {
    let dir: String
    var configDir: [String] { ["--config-dir", dir] }
    var paths: SnapdumpPaths { SnapdumpPaths(configDir: dir, runDir: dir + "/run") }

    init() throws { dir = try Integration.scratchDirectory("jobcli") }

    func run(_ args: [String]) async throws {
        var cmd = try Snapdump.parseAsRoot(args)
        if var a = cmd as? AsyncParsableCommand { try await a.run() } else { try cmd.run() }
    }

    func jobsCfg() throws -> String { try FileSystem.readText(paths.jobsConfig) }

    @Test func addSetShowRemove() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await run(["job", "add", "--id", "nightly", "--schedule", "mon..fri 22:30", "--vmid", "100,101", "--storage", "local",
                       "--mode", "stop", "--compress", "zstd", "--prune-backups", "keep-last=3", "--comment", "two guests"] + configDir)
        #expect(try jobsCfg() == """
            vzdump: nightly
            \tschedule mon..fri 22:30
            \tcomment two guests
            \tvmid 100,101
            \tmode stop
            \tstorage local
            \tcompress zstd
            \tprune-backups keep-last=3


            """)
        try await run(["job", "set", "nightly", "--mode", "snapshot", "--enabled", "0", "--delete", "comment,prune-backups"] + configDir)
        #expect(try jobsCfg() == "vzdump: nightly\n\tschedule mon..fri 22:30\n\tvmid 100,101\n\tmode snapshot\n\tstorage local\n\tcompress zstd\n\tenabled 0\n\n")
        try await run(["job", "list"] + configDir)
        try await run(["job", "show", "nightly"] + configDir)
        try await run(["job", "add", "--schedule", "daily", "--all", "--dumpdir", "/srv/dump"] + configDir)
        let cfg = try JobsConfig.load(paths: paths)
        #expect(cfg.jobs.count == 2 && cfg.jobs[1].id.hasPrefix("backup-") && cfg.jobs[1].id.count == 19)
        try await run(["job", "remove", "nightly"] + configDir)
        #expect(try JobsConfig.load(paths: paths).jobs.map(\.id) == [cfg.jobs[1].id])
        await #expect(throws: (any Error).self) { try await run(["job", "remove", "nightly"] + configDir) }
    }

    @Test func badInputChangesNothing() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await run(["job", "add", "--id", "a", "--schedule", "daily", "--vmid", "100"] + configDir)
        let before = try jobsCfg()
        for args in [
            ["job", "add", "--id", "b", "--schedule", "0 2 * * *", "--vmid", "100"],
            ["job", "add", "--id", "b", "--schedule", "daily", "--vmid", "100", "--all"],
            ["job", "add", "--id", "b", "--schedule", "daily"],
            ["job", "add", "--id", "a", "--schedule", "daily", "--vmid", "100"],
            ["job", "add", "--id", "9b", "--schedule", "daily", "--vmid", "100"],
            ["job", "add", "--id", "b", "--schedule", "daily", "--vmid", "100", "--mode", "fast"],
            ["job", "add", "--id", "b", "--schedule", "daily", "--vmid", "100", "--compress", "lzo"],
            ["job", "set", "a", "--all"],
            ["job", "set", "a", "--schedule", "mon..fry"],
            ["job", "set", "a", "--delete", "vmid"],
            ["job", "set", "nope", "--mode", "stop"],
            ["job", "show", "nope"],
        ] {
            await #expect(throws: (any Error).self, "\(args)") { try await run(args + configDir) }
        }
        #expect(try jobsCfg() == before)
    }

    @Test func cronScheduleShowsTheEquivalent() throws {
        do {
            _ = try Snapdump.parseAsRoot(["job", "add", "--schedule", "0 2 * * *", "--all"] + configDir)
            Issue.record("accepted")
        } catch {
            let text = Snapdump.message(for: error)
            #expect(text.contains("cron syntax") && text.contains("write '02:00'") && text.contains("^^^"), "\(text)")
        }
    }

    /// `job run` goes through the real engine; a job whose guest does not exist fails and says why.
    @Test func runRecordsAFailure() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileSystem.createDirectory(dir + "/dump")
        try await run(["job", "add", "--id", "a", "--schedule", "daily", "--vmid", "100", "--dumpdir", dir + "/dump", "--quiet"] + configDir)
        await #expect(throws: ExitCode.self) { try await run(["job", "run", "a"] + configDir) }
        let last = try #require(try JobStateStore(paths: paths).read("a")?.lastRun)
        #expect(last.result == .failed && last.trigger == "manual")
        #expect(last.error?.contains("unable to find configuration file for VM 100") == true)
        let log = try FileSystem.readText(try #require(last.taskLog))
        #expect(log.contains("ERROR: job 'a' failed: unable to find configuration file for VM 100"))
    }

    /// A task log is named by the run's local time as archives are; a second run in the same second gets `.2`.
    @Test func taskLogNames() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = JobStateStore(paths: paths)
        let start = Date(timeIntervalSince1970: 1_796_004_000.75)
        let reference = DateFormatter()
        reference.locale = Locale(identifier: "en_US_POSIX")
        reference.timeZone = .current
        reference.dateFormat = "yyyy_MM_dd-HH_mm_ss"
        let base = "\(store.logDirectory("a"))/\(reference.string(from: start))"
        let first = try store.newTaskLog("a", date: start)
        #expect(first == base + ".log")
        try FileSystem.writeAtomically(first, "")
        #expect(try store.newTaskLog("a", date: start) == base + ".2.log")
    }

    @Test func scheduleAnalyzeOptions() throws {
        let berlin = TimeZone(identifier: "Europe/Berlin")!
        #expect(try ScheduleAnalyze.parseStart("2024-10-27 02:30", zone: berlin) == Date(timeIntervalSince1970: 1_729_989_000))
        #expect(try ScheduleAnalyze.parseStart("1729989000", zone: berlin) == Date(timeIntervalSince1970: 1_729_989_000))
        // The shapes CivilTime(lenient:) reads, and the hour the clocks skip (read as 03:30 CEST).
        #expect(try ScheduleAnalyze.parseStart("2024-10-27T02:30:00", zone: berlin) == Date(timeIntervalSince1970: 1_729_989_000))
        #expect(try ScheduleAnalyze.parseStart("2024-10-27", zone: berlin) == Date(timeIntervalSince1970: 1_729_980_000))
        #expect(try ScheduleAnalyze.parseStart("2024-03-31 02:30", zone: berlin) == Date(timeIntervalSince1970: 1_711_848_600))
        let bad = #expect(throws: (any Error).self) { try ScheduleAnalyze.parseStart("27.10.2024", zone: berlin) }
        #expect(bad.map { "\($0)" } == "invalid --starttime '27.10.2024': expected \"YYYY-MM-DD HH:MM[:SS]\" (local time, years 1-9999) or seconds since the epoch")
        let far = #expect(throws: (any Error).self) { try ScheduleAnalyze.parseStart("253402300799", zone: berlin) }
        #expect(far.map { "\($0)" } == "invalid --starttime '253402300799': seconds since the epoch must lie in the years 1-9999")
        #expect(throws: (any Error).self) { try Snapdump.parseAsRoot(["schedule", "analyze", "daily", "--iterations", "0"]) }
        #expect(throws: (any Error).self) {
            var c = try Snapdump.parseAsRoot(["schedule", "analyze", "mon..fry"])
            try c.run()
        }
    }

    /// Every option the backup and job commands share maps to a known vzdump key.
    @Test func backupOptionsCoverTheVzdumpKeys() throws {
        let args = try BackupOptionArguments.parse([
            "--all", "--exclude", "101", "--mode", "stop", "--storage", "local", "--compress", "zstd",
            "--zstd", "2", "--stopwait", "3", "--bwlimit", "1000", "--tmpdir", "/tmp", "--snapshot-fallback", "refuse",
            "--lockwait", "5", "--quiet", "--prune-backups", "keep-last=2", "--remove", "0", "--notes-template", "{{vmid}}",
            "--protected", "1", "--script", "/bin/true", "--ionice", "7", "--mailto", "root", "--mailnotification", "always",
        ])
        let keys = args.properties().map(\.key)
        for k in keys { #expect(BackupParameters.keyNames.contains(k), "\(k)") }
        for k in ["all", "exclude", "mode", "storage", "compress", "zstd", "stopwait", "bwlimit", "tmpdir", "snapshot-fallback",
                  "lockwait", "quiet", "prune-backups", "remove", "notes-template", "protected", "script", "ionice", "mailto"] {
            #expect(keys.contains(k), "\(k)")
        }
        _ = try BackupParameters(args.properties())
        let withDumpdir = try BackupOptionArguments.parse(["--dumpdir", "rel/dir"])
        #expect(withDumpdir.properties().first?.value.hasPrefix("/") == true)
    }

    @Test func backupCommandUsesTheSameChecks() throws {
        #expect(throws: (any Error).self) { try Snapdump.parseAsRoot(["backup"]) }
        #expect(throws: (any Error).self) { try Snapdump.parseAsRoot(["backup", "100", "--all"]) }
        #expect(throws: (any Error).self) { try Snapdump.parseAsRoot(["backup", "100", "--compress", "lzo"]) }
        #expect(throws: (any Error).self) { try Snapdump.parseAsRoot(["backup", "100", "--storage", "a", "--dumpdir", "/x"]) }
        let cmd = try #require(try Snapdump.parseAsRoot(["backup", "100", "101", "--mode", "stop", "--zstd", "0", "--compress", "zstd"]) as? BackupCommand)
        let o = try cmd.parameters().options()
        #expect(o.vmids == [100, 101] && o.mode == .stop && o.compression == .zstd(level: 3, workers: 0))
        _ = try Snapdump.parseAsRoot(["backup", "--exclude", "101"])
    }
}
