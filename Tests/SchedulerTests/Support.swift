import Foundation
import Logging
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Scheduler

/// A clock that only moves when told to: `sleep(until:)` jumps to the
/// deadline at once; at `limit` it stops the scheduler instead.
final class ManualClock: SchedulerClock, @unchecked Sendable {
    // @unchecked: all state is behind `lock`.
    private let lock = NSLock()
    private var time: Date
    private var limit: Date?
    private var onLimit: (@Sendable () async -> Void)?

    init(_ start: Date) { time = start }

    func now() -> Date { lock.withLock { time } }

    func set(_ d: Date) { lock.withLock { time = d } }

    func advance(_ seconds: TimeInterval) { lock.withLock { time = time.addingTimeInterval(seconds) } }

    func stop(at limit: Date, _ action: @escaping @Sendable () async -> Void) {
        lock.withLock {
            self.limit = limit
            onLimit = action
        }
    }

    func sleep(until deadline: Date) async throws {
        try Task.checkCancellation()
        let (reached, action): (Bool, (@Sendable () async -> Void)?) = lock.withLock {
            if let limit, deadline >= limit {
                time = max(time, limit)
                return (true, onLimit)
            }
            time = max(time, deadline)
            return (false, nil)
        }
        if reached {
            await action?()
            throw CancellationError()
        }
    }
}

/// Records runs instead of backing up; can fail, take time, or act mid-run.
final class FakeRunner: JobRunner, @unchecked Sendable {
    // @unchecked: all state is behind `lock`.
    struct Record: Equatable {
        var id: String
        var start: Date
        var end: Date
        var trigger: String
    }

    private let lock = NSLock()
    let clock: ManualClock
    private var _records: [Record] = []
    private var active = 0
    private(set) var maxActive = 0
    var failing: Set<String> = []
    /// Seconds of (fake) time each run takes.
    var duration: TimeInterval = 0
    /// Called during a run, before it ends.
    var during: (@Sendable (JobRun) async -> Void)?
    /// Wait (in real time) until the run is interrupted.
    var waitForInterrupt = false

    init(clock: ManualClock) { self.clock = clock }

    var records: [Record] { lock.withLock { _records } }
    var ids: [String] { records.map(\.id) }

    func run(_ r: JobRun) async -> JobOutcome {
        let start = clock.now()
        lock.withLock {
            active += 1
            maxActive = max(maxActive, active)
        }
        try? FileSystem.writeAtomically(r.taskLog, "INFO: fake run of \(r.job.id)\n")
        await during?(r)
        if waitForInterrupt {
            while r.interrupt.received == nil { try? await Task.sleep(nanoseconds: 5_000_000) }
        }
        clock.advance(duration)
        let end = clock.now()
        lock.withLock {
            active -= 1
            _records.append(Record(id: r.job.id, start: start, end: end, trigger: r.trigger))
        }
        if let sig = r.interrupt.received { return JobOutcome(ok: false, error: "interrupted by signal \(sig)") }
        if failing.contains(r.job.id) { return JobOutcome(ok: false, error: "boom: \(r.job.id) failed") }
        return JobOutcome(ok: true, archives: ["/dump/vzdump-qemu-100-\(r.job.id).vma.zst"])
    }
}

/// A scratch config dir with a jobs.cfg, a scheduler in UTC on a manual clock.
struct SchedulerFixture {
    let dir: String
    let paths: SnapdumpPaths
    let clock: ManualClock
    let runner: FakeRunner
    let scheduler: Scheduler

    let log = LogCapture()

    init(start: String, jobs: String = "", zone: String = "UTC") throws {
        dir = try Integration.scratchDirectory("sched")
        paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        clock = ManualClock(utc(start))
        runner = FakeRunner(clock: clock)
        scheduler = Scheduler(paths: paths, clock: clock, runner: runner, logger: log.logger,
                              timeZone: TimeZone(identifier: zone)!, hostname: "testhost")
        if !jobs.isEmpty { try writeJobs(jobs) }
    }

    func writeJobs(_ text: String) throws {
        try FileSystem.writeAtomically(paths.jobsConfig, text)
    }

    var store: JobStateStore { JobStateStore(paths: paths) }

    func state(_ id: String) throws -> JobState? { try store.read(id) }

    /// Runs the real loop (a tick at the start of each minute) until `end`.
    func runLoop(until end: String) async {
        let s = scheduler
        clock.stop(at: utc(end)) { await s.shutdown() }
        await scheduler.run()
    }

    /// Ticks at `time` (UTC).
    @discardableResult
    func tick(at time: String) async -> [String] {
        clock.set(utc(time))
        return await scheduler.tick()
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }
}

/// `YYYY-MM-DD HH:MM[:SS]` in UTC.
func utc(_ s: String) -> Date { CivilTime(lenient: s)!.date }

/// A jobs.cfg section; `extra` are `key value` lines.
func job(_ id: String, _ schedule: String, _ extra: String...) -> String {
    "vzdump: \(id)\n\tschedule \(schedule)\n\tvmid 100\n\tstorage local\n" + extra.map { "\t\($0)\n" }.joined() + "\n"
}

/// Log lines a scheduler wrote, as `<priority>message` (journal style).
final class LogCapture: @unchecked Sendable {
    // @unchecked: all state is behind `lock`.
    private let lock = NSLock()
    private var _lines: [String] = []

    var lines: [String] { lock.withLock { _lines } }

    var logger: Logger {
        var l = Logger(label: "snapdumpd") { _ in
            DaemonLogHandler(journal: true) { [self] line in self.lock.withLock { self._lines.append(line) } }
        }
        l.logLevel = .info
        return l
    }

    /// The lines logged since the last call.
    func take() -> [String] {
        lock.withLock {
            defer { _lines = [] }
            return _lines
        }
    }
}
