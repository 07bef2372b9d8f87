#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Scheduler

/// The scheduler on a manual clock with a fake runner: days pass in milliseconds.
@Suite struct SchedulerTests {
    @Test func jobDueAt0200RunsOnce() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:58:30", jobs: job("nightly", "02:00"))
        defer { f.cleanup() }
        await f.runLoop(until: "2026-05-02 01:59:30")
        #expect(f.runner.records.map(\.start) == [utc("2026-05-01 02:00:00")])
        #expect(f.runner.records.first?.trigger == "schedule")
        let s = try #require(try f.state("nightly"))
        let run = try #require(s.lastRun)
        #expect(run.start == utc("2026-05-01 02:00:00"))
        #expect(run.result == .ok)
        #expect(run.archives == ["/dump/vzdump-qemu-100-nightly.vma.zst"])
        #expect(run.end != nil && run.pid == nil)
        let log = try #require(run.taskLog)
        #expect(log.hasPrefix(f.dir + "/jobs/log/nightly/") && FileSystem.exists(log))
        #expect(!s.isRunning && s.updated == nil)
    }

    @Test func disabledJobNeverRuns() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:00:30",
                                     jobs: job("off", "*/10", "enabled 0") + job("on", "hourly"))
        defer { f.cleanup() }
        await f.runLoop(until: "2026-05-01 05:00:30")
        #expect(f.runner.ids == ["on", "on", "on", "on"])
        #expect(try f.state("off")?.lastRun == nil)
    }

    /// repeat-missed 0 (default): a run missed while snapdumpd was down is skipped.
    @Test func missedRunIsSkipped() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 10:00:00", jobs: job("nightly", "02:00"))
        defer { f.cleanup() }
        try seedLastRun(f, "nightly", at: "2026-04-29 02:00:00")
        #expect(await f.scheduler.tick().isEmpty)
        await f.runLoop(until: "2026-05-02 02:00:30")
        #expect(f.runner.records.map(\.start) == [utc("2026-05-02 02:00:00")])
    }

    /// repeat-missed 1: it runs once at start-up, then on schedule again.
    @Test func missedRunIsRepeatedOnce() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 10:00:00",
                                     jobs: job("nightly", "02:00", "repeat-missed 1") + job("fresh", "sat 05:00", "repeat-missed 1"))
        defer { f.cleanup() }
        try seedLastRun(f, "nightly", at: "2026-04-28 02:00:00") // missed three nights: runs once
        try f.store.write("fresh", JobState(created: utc("2026-04-01 00:00:00"))) // created, never run, missed
        await f.runLoop(until: "2026-05-02 02:00:30")
        #expect(f.runner.records.map { "\($0.id) \(CivilTime($0.start, .utc).spaced) \($0.trigger)" } == [
            "fresh 2026-05-01 10:00:00 repeat-missed",
            "nightly 2026-05-01 10:00:00 repeat-missed",
            "nightly 2026-05-02 02:00:00 schedule",
        ])
    }

    @Test func twoJobsDueTheSameMinuteRunOneAfterTheOther() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:59:30", jobs: job("b-second", "02:00") + job("a-first", "02:00"))
        defer { f.cleanup() }
        f.runner.duration = 90
        await f.runLoop(until: "2026-05-01 02:10:00")
        let r = f.runner.records
        #expect(r.map(\.id) == ["a-first", "b-second"])
        #expect(r[0].start == utc("2026-05-01 02:00:00") && r[0].end == utc("2026-05-01 02:01:30"))
        #expect(r[1].start == r[0].end)
        #expect(f.runner.maxActive == 1)
    }

    /// Edits made while a job runs: a job disabled mid-tick does not run, a
    /// changed schedule counts from the edit, a new job is picked up.
    @Test func editingJobsWhileRunningTakesEffect() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:59:30", jobs: job("a", "02:00") + job("b", "02:00"))
        defer { f.cleanup() }
        let paths = f.paths
        f.runner.during = { r in
            guard r.job.id == "a", r.job.schedule.text == "02:00" else { return }
            try? FileSystem.writeAtomically(paths.jobsConfig, job("a", "03:00") + job("b", "02:00", "enabled 0") + job("c", "*/30"))
        }
        await f.runLoop(until: "2026-05-01 04:00:30")
        #expect(f.runner.records.map { "\($0.id) \(CivilTime($0.start, .utc).spaced.suffix(8))" } == [
            "a 02:00:00", "c 02:30:00", "a 03:00:00", "c 03:00:00", "c 03:30:00", "c 04:00:00",
        ])
        #expect(try f.state("b")?.lastRun == nil)
    }

    @Test func scheduleEditMovesTheNextRun() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 00:00:30", jobs: job("a", "02:00"))
        defer { f.cleanup() }
        #expect(await f.tick(at: "2026-05-01 00:00:30").isEmpty)
        try f.writeJobs(job("a", "01:00"))
        #expect(await f.tick(at: "2026-05-01 00:30:00").isEmpty)
        #expect(await f.tick(at: "2026-05-01 01:00:00") == ["a"])
        #expect(await f.tick(at: "2026-05-01 02:00:00").isEmpty)
        // Changed to a time already past today: counts from the edit, not from the last run.
        try f.writeJobs(job("a", "00:30"))
        #expect(await f.tick(at: "2026-05-01 02:01:00").isEmpty)
        #expect(await f.tick(at: "2026-05-02 00:30:00") == ["a"])
    }

    @Test func brokenJobsCfgKeepsThePreviousJobs() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:00:00", jobs: job("h", "hourly"))
        defer { f.cleanup() }
        #expect(await f.tick(at: "2026-05-01 01:00:00").isEmpty)
        #expect(await f.tick(at: "2026-05-01 02:00:00") == ["h"])
        try f.writeJobs(job("h", "hourly", "frobnicate 1"))
        #expect(await f.tick(at: "2026-05-01 03:00:00") == ["h"])
        #expect(try f.state("h") != nil)
        try f.writeJobs(job("h", "hourly", "enabled 0"))
        #expect(await f.tick(at: "2026-05-01 04:00:00").isEmpty)
    }

    /// The start-up rule (skip missed events) waits for a jobs.cfg that parses.
    @Test func startUpRuleAppliesOnceJobsCfgLoads() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 10:00:00", jobs: job("nightly", "02:00", "bogus 1"))
        defer { f.cleanup() }
        try seedLastRun(f, "nightly", at: "2026-04-28 02:00:00")
        #expect(await f.tick(at: "2026-05-01 10:00:00").isEmpty)
        #expect(try f.state("nightly")?.lastRun?.start == utc("2026-04-28 02:00:00")) // a broken file removes no state
        try f.writeJobs(job("nightly", "02:00"))
        #expect(await f.tick(at: "2026-05-01 10:05:00").isEmpty)
        #expect(await f.tick(at: "2026-05-02 02:00:00") == ["nightly"])
    }

    @Test func failingJobDoesNotStopTheScheduler() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 02:00:30", jobs: job("bad", "*/1") + job("good", "*/1"))
        defer { f.cleanup() }
        f.runner.failing = ["bad"]
        await f.runLoop(until: "2026-05-01 02:05:30")
        #expect(f.runner.ids == Array(repeating: ["bad", "good"], count: 5).flatMap { $0 })
        let bad = try #require(try f.state("bad")?.lastRun)
        #expect(bad.result == .failed && bad.error == "boom: bad failed")
        #expect(try f.state("good")?.lastRun?.result == .ok)
    }

    @Test func shutdownInterruptsTheRunningJobAndWaitsForIt() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:59:30", jobs: job("a", "02:00") + job("b", "02:00"))
        defer { f.cleanup() }
        f.runner.waitForInterrupt = true
        let s = f.scheduler
        f.runner.during = { _ in
            Task {
                try? await Task.sleep(nanoseconds: 50_000_000)
                await s.shutdown()
            }
        }
        await f.runLoop(until: "2026-06-01 00:00:00")
        #expect(f.runner.ids == ["a"]) // b is not started after the shutdown
        let run = try #require(try f.state("a")?.lastRun)
        #expect(run.result == .failed && run.error == "interrupted by signal \(SIGTERM)")
        #expect(await s.isStopping)
    }

    @Test func staleRunningStateIsClosed() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 10:00:00", jobs: job("a", "02:00"))
        defer { f.cleanup() }
        var s = JobState(created: utc("2026-04-01 00:00:00"))
        s.schedule = "02:00"
        s.enabled = true
        s.lastRun = JobState.Run(start: utc("2026-05-01 02:00:00"), trigger: "schedule", taskLog: nil, pid: 999_999_999)
        try f.store.write("a", s)
        await f.tick(at: "2026-05-01 10:00:00")
        let run = try #require(try f.state("a")?.lastRun)
        #expect(run.result == .failed && run.error?.contains("aborted") == true)
    }

    @Test func removedJobLosesItsState() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:00:00", jobs: job("a", "02:00") + job("b", "02:00"))
        defer { f.cleanup() }
        await f.tick(at: "2026-05-01 01:00:00")
        #expect(Set(f.store.ids()) == ["a", "b"])
        try f.writeJobs(job("a", "02:00"))
        await f.tick(at: "2026-05-01 01:01:00")
        #expect(f.store.ids() == ["a"])
    }

    @Test func nodeRestriction() async throws {
        let f = try SchedulerFixture(start: "2026-05-01 01:00:00",
                                     jobs: job("here", "hourly", "node testhost") + job("there", "hourly", "node otherhost"))
        defer { f.cleanup() }
        await f.tick(at: "2026-05-01 01:00:00")
        #expect(await f.tick(at: "2026-05-01 02:00:00") == ["here"])
    }

    /// In Europe/Berlin, 02:30 does not exist on 2024-03-31: that night has no run.
    @Test func daylightSavingNightInLocalTime() async throws {
        let f = try SchedulerFixture(start: "2024-03-29 23:00:30", jobs: job("n", "02:30"), zone: "Europe/Berlin")
        defer { f.cleanup() }
        await f.runLoop(until: "2024-04-01 01:00:00")
        #expect(f.runner.records.map(\.start) == [utc("2024-03-30 01:30:00"), utc("2024-04-01 00:30:00")])
    }

    func seedLastRun(_ f: SchedulerFixture, _ id: String, at time: String) throws {
        var s = JobState(created: utc("2026-04-01 00:00:00"))
        var run = JobState.Run(start: utc(time), trigger: "schedule", taskLog: nil, pid: nil)
        run.end = utc(time).addingTimeInterval(60)
        run.result = .ok
        s.lastRun = run
        try f.store.write(id, s)
    }
}
