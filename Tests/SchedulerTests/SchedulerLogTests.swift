import Foundation
import Logging
import Testing
import SnapdumpSystem
@testable import Scheduler

/// What snapdumpd tells the journal: every rejected jobs.cfg and every
/// recovery, once each; priorities that `journalctl -p err` can filter on.
@Suite struct SchedulerLogTests {
    @Test func everyRejectedJobsCfgAndEveryRecoveryIsLogged() async throws {
        let good = job("h", "hourly")
        let bad = job("h", "hourly", "frobnicate 1")
        let f = try SchedulerFixture(start: "2026-05-01 01:00:00", jobs: good)
        defer { f.cleanup() }
        await f.tick(at: "2026-05-01 01:00:00")
        #expect(f.log.take().filter { $0.hasPrefix("<3>") }.isEmpty)

        try f.writeJobs(bad)
        await f.tick(at: "2026-05-01 01:01:00")
        let rejected = f.log.take()
        #expect(rejected.filter { $0.hasPrefix("<3>cannot load jobs") && $0.contains("frobnicate") }.count == 1, "\(rejected)")
        // The same broken file a minute later: no new error.
        await f.tick(at: "2026-05-01 01:02:00")
        #expect(f.log.take().filter { $0.hasPrefix("<3>") }.isEmpty)

        // Put back as it was (the text still in force): the recovery is logged.
        try f.writeJobs(good)
        await f.tick(at: "2026-05-01 01:03:00")
        let recovered = f.log.take()
        #expect(recovered.contains { $0.hasPrefix("<6>") && $0.contains("valid again") }, "\(recovered)")

        // The same mistake again is an error again.
        try f.writeJobs(bad)
        await f.tick(at: "2026-05-01 01:04:00")
        let again = f.log.take()
        #expect(again.filter { $0.hasPrefix("<3>cannot load jobs") }.count == 1, "\(again)")

        // Another broken text is another error; a new valid one is a recovery too.
        try f.writeJobs(job("h", "hourly", "enabled maybe"))
        await f.tick(at: "2026-05-01 01:05:00")
        #expect(f.log.take().filter { $0.hasPrefix("<3>cannot load jobs") }.count == 1)
        try f.writeJobs(job("h", "daily"))
        await f.tick(at: "2026-05-01 01:06:00")
        #expect(f.log.take().contains { $0.hasPrefix("<6>") && $0.contains("valid again") && $0.contains("1 job(s)") })
        #expect(await f.scheduler.currentJobs.first?.schedule.text == "daily")
    }

    @Test func failedJobIsAnErrorForTheJournal() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:59:30", jobs: job("nightly", "02:00"))
        defer { f.cleanup() }
        f.runner.failing = ["nightly"]
        await f.tick(at: "2026-05-01 01:59:30")
        await f.tick(at: "2026-05-01 02:00:00")
        let lines = f.log.take()
        #expect(lines.contains("<3>job nightly failed: boom: nightly failed\n"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("<6>job nightly started") }, "\(lines)")
        // One line per event, each ending in exactly one newline.
        for l in lines {
            let single = l.hasSuffix("\n") && l.dropLast().allSatisfy { !$0.isNewline }
            #expect(single, "\(l.debugDescription)")
        }
    }

    @Test func prioritiesAndLineFormat() {
        let expected: [(Logger.Level, Int)] = [(.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2)]
        for (level, p) in expected { #expect(DaemonLogHandler.priority(level) == p, "\(level)") }
        let date = Date(timeIntervalSince1970: 0)
        #expect(DaemonLogHandler.line(level: .error, message: "job a failed: disk\nfull", metadata: [:], journal: true, date: date)
                == "<3>job a failed: disk full\n")
        #expect(DaemonLogHandler.line(level: .info, message: "x", metadata: ["vmid": "100"], journal: true, date: date) == "<6>x vmid=100\n")
        let plain = DaemonLogHandler.line(level: .warning, message: "careful", metadata: [:], journal: false, date: date)
        #expect(plain.hasSuffix(" WARN: careful\n") && plain.count == "yyyy-MM-dd HH:mm:ss".count + " WARN: careful\n".count, "\(plain)")
    }

    @Test func journalIsDetectedOnlyForTheStreamItNamed() {
        #expect(DaemonLogHandler.journalStream("8:12345", matchesDevice: 8, inode: 12345))
        #expect(!DaemonLogHandler.journalStream("8:12345", matchesDevice: 8, inode: 999))
        #expect(!DaemonLogHandler.journalStream(nil, matchesDevice: 8, inode: 12345))
        #expect(!DaemonLogHandler.journalStream("garbage", matchesDevice: 8, inode: 12345))
        // The test's stderr is not the journal stream JOURNAL_STREAM names (set by whoever started us, or not at all).
        #expect(!DaemonLogHandler.stderrIsJournal(environment: ["JOURNAL_STREAM": "0:0"]))
        #expect(!DaemonLogHandler.standardError(environment: [:]).journal)
    }
}
