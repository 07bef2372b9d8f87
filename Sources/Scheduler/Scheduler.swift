#if canImport(Glibc)
import Glibc
#endif
import Backup
import Foundation
import Logging
import SnapdumpConfig
import SnapdumpSystem

/// The scheduler's sense of time, injected so tests never sleep.
public protocol SchedulerClock: Sendable {
    func now() -> Date
    /// Returns at `deadline`, or throws `CancellationError` when the task is cancelled.
    func sleep(until deadline: Date) async throws
}

/// Wall-clock time.
public struct SystemClock: SchedulerClock {
    public init() {}
    public func now() -> Date { Date() }
    public func sleep(until deadline: Date) async throws {
        let s = deadline.timeIntervalSinceNow
        if s > 0 { try await Task.sleep(nanoseconds: UInt64(s * 1_000_000_000)) }
    }
}

/// One run of a job, as the runner gets it.
public struct JobRun: Sendable {
    public var job: BackupJobDefinition
    public var paths: SnapdumpPaths
    /// Where this run's task log goes.
    public var taskLog: String
    /// Raised with SIGTERM when the scheduler shuts down; the backup aborts with its cleanup.
    public var interrupt: Interrupt
    /// "schedule", "repeat-missed" or "manual".
    public var trigger: String
}

/// What a run produced.
public struct JobOutcome: Sendable, Equatable {
    public var ok: Bool
    public var archives: [String]
    public var error: String?

    public init(ok: Bool, archives: [String] = [], error: String? = nil) {
        self.ok = ok
        self.archives = archives
        self.error = error
    }
}

/// Runs a job: the backup engine in production, a fake in tests.
public protocol JobRunner: Sendable {
    func run(_ run: JobRun) async -> JobOutcome
}

/// The snapdumpd scheduler, as Proxmox's pvescheduler runs vzdump jobs.
///
/// Every minute (at the minute's start) it reloads jobs.cfg if it changed,
/// brings the job state files in line with it, and runs each enabled job
/// whose next event after its reference time (see `JobState.reference`) has
/// come — one job at a time, in id order. A failing job is recorded and the
/// scheduler goes on. `repeat-missed 0` (the default): at start-up the
/// reference becomes "now", so events missed while the scheduler was down are
/// skipped; `repeat-missed 1`: a missed event runs the job once at start-up.
/// `shutdown()` stops the loop; a running job gets SIGTERM through its
/// `Interrupt`, aborts with its cleanup, and is waited for.
public actor Scheduler {
    public nonisolated let paths: SnapdumpPaths
    public nonisolated let store: JobStateStore
    let clock: any SchedulerClock
    let runner: any JobRunner
    let logger: Logger
    let timeZone: TimeZone
    let hostname: String

    private var loadedText: String?
    private var loaded = false
    private var jobs: [BackupJobDefinition] = []
    /// The content of jobs.cfg last rejected, so it is logged once, not every minute.
    private var rejectedText: String?
    private var started = false
    private var stopping = false
    private var current: Interrupt?
    private var sleeper: Task<Void, any Error>?

    public init(paths: SnapdumpPaths, clock: any SchedulerClock = SystemClock(), runner: any JobRunner,
                logger: Logger = Logger(label: "snapdumpd"), timeZone: TimeZone = .current, hostname: String? = nil) {
        self.paths = paths
        self.store = JobStateStore(paths: paths)
        self.clock = clock
        self.runner = runner
        self.logger = logger
        self.timeZone = timeZone
        self.hostname = hostname ?? Self.localHostname()
    }

    /// The jobs as last loaded.
    public var currentJobs: [BackupJobDefinition] { jobs }

    /// Runs until `shutdown()` or cancellation: a check now, then one at the start of every minute.
    public func run() async {
        logger.info("scheduler started (jobs: \(paths.jobsConfig), state: \(store.directory))")
        await withTaskCancellationHandler {
            while !stopping && !Task.isCancelled {
                await tick()
                if stopping || Task.isCancelled { break }
                let now = clock.now()
                let next = Date(timeIntervalSince1970: (now.timeIntervalSince1970 / 60).rounded(.down) * 60 + 60)
                let clock = self.clock
                let t = Task { try await clock.sleep(until: next) }
                sleeper = t
                _ = try? await t.value
                sleeper = nil
            }
        } onCancel: {
            Task { await self.shutdown() }
        }
        logger.info("scheduler stopped")
    }

    /// Stops after the running job, which is interrupted (SIGTERM) so it aborts with its cleanup.
    public func shutdown() {
        guard !stopping else { return }
        stopping = true
        logger.info("shutting down\(current != nil ? ": interrupting the running job" : "")")
        current?.raise(SIGTERM)
        sleeper?.cancel()
    }

    public var isStopping: Bool { stopping }

    /// One check: reload, synchronise states, run the due jobs one after the
    /// other. Returns the ids of the jobs run.
    @discardableResult
    public func tick() async -> [String] {
        let now = clock.now()
        reloadIfChanged()
        synchronizeStates(now: now)
        // The start-up rule applies once jobs.cfg has been read successfully.
        let firstTick = !started && loaded
        if firstTick {
            started = true
            for job in jobs where !job.repeatMissed {
                // As Proxmox: a job that missed its time while we were down
                // does not run now; its next event counts from now.
                _ = try? store.update(job.id, now: now) { $0.updated = now }
            }
        }
        var ran: [String] = []
        for id in jobs.map(\.id).sorted() {
            if stopping { break }
            reloadIfChanged() // an edit made while the previous job ran counts
            guard let job = jobs.first(where: { $0.id == id }) else { continue }
            let checkTime = clock.now()
            guard let due = dueEvent(job, now: checkTime) else { continue }
            let trigger = firstTick && job.repeatMissed && due < now.addingTimeInterval(-60) ? "repeat-missed" : "schedule"
            await runJob(job, trigger: trigger)
            ran.append(id)
        }
        return ran
    }

    /// The event that makes `job` due at `now`, or nil.
    func dueEvent(_ job: BackupJobDefinition, now: Date) -> Date? {
        guard job.enabled else { return nil }
        if let node = job.node, node != hostname { return nil }
        guard let state = (try? store.read(job.id)) ?? nil else { return nil }
        if state.isRunning { return nil }
        guard let next = job.schedule.next(after: state.reference, in: timeZone), next <= now else { return nil }
        return next
    }

    /// Runs `job` now, through the runner, recording state and task log.
    @discardableResult
    public func runJob(_ job: BackupJobDefinition, trigger: String) async -> JobOutcome {
        let start = clock.now()
        let taskLog: String
        do {
            taskLog = try store.newTaskLog(job.id, date: start)
            try store.update(job.id, now: start) { s in
                s.updated = nil
                s.lastRun = JobState.Run(start: start, trigger: trigger, taskLog: taskLog, pid: getpid())
            }
        } catch {
            logger.error("job \(job.id): cannot record its start, not running it: \(error)")
            return JobOutcome(ok: false, error: "\(error)")
        }
        logger.info("job \(job.id) started (\(trigger), schedule '\(job.schedule.text)'), task log \(taskLog)")
        let interrupt = Interrupt()
        current = interrupt
        if stopping { interrupt.raise(SIGTERM) }
        let outcome = await runner.run(JobRun(job: job, paths: paths, taskLog: taskLog, interrupt: interrupt, trigger: trigger))
        current = nil
        // A run's buffers are freed by now; without a trim glibc keeps them, and snapdumpd idles at the run's peak.
        ProcessMemory.returnFreedMemory()
        if let rss = ProcessMemory.residentBytes() { logger.info("job \(job.id): resident memory \(rss >> 20) MiB after the run") }
        let end = clock.now()
        do {
            try store.update(job.id, now: end) { s in
                if s.lastRun == nil { s.lastRun = JobState.Run(start: start, trigger: trigger, taskLog: taskLog, pid: nil) }
                s.lastRun!.end = end
                s.lastRun!.result = outcome.ok ? .ok : .failed
                s.lastRun!.error = outcome.error
                s.lastRun!.archives = outcome.archives
                s.lastRun!.pid = nil
            }
        } catch {
            logger.error("job \(job.id): cannot record its result: \(error)")
        }
        if outcome.ok {
            logger.info("job \(job.id) finished: ok (\(outcome.archives.count) archive(s)) in \(Int(end.timeIntervalSince(start))) s")
        } else {
            logger.error("job \(job.id) failed: \(outcome.error ?? "see \(taskLog)")")
        }
        return outcome
    }

    /// Re-reads jobs.cfg when its content changed. A file that does not parse
    /// keeps the previous jobs in force; each rejected content is logged once
    /// (as an error), and so is the return to a valid file — also when it is
    /// the text that was in force before, which needs no reload.
    func reloadIfChanged() {
        let path = paths.jobsConfig
        let text = FileSystem.exists(path) ? (try? FileSystem.readText(path)) : ""
        guard let text else { return }
        if text == rejectedText { return }
        if loaded && text == loadedText {
            if rejectedText != nil {
                logger.info("\(path) is valid again: keeping its \(jobs.count) job(s)")
                rejectedText = nil
            }
            return
        }
        do {
            let cfg = try JobsConfig.parse(text, file: path)
            if rejectedText != nil {
                logger.info("\(path) is valid again: \(cfg.jobs.count) job(s)")
            } else if loaded {
                logger.info("\(path) changed: \(cfg.jobs.count) job(s)")
            }
            jobs = cfg.jobs
            loadedText = text
            loaded = true
            rejectedText = nil
        } catch {
            logger.error("cannot load jobs, keeping the previous ones: \(error)")
            rejectedText = text
        }
    }

    /// Creates states for new jobs, notes schedule/enabled edits (the next
    /// event then counts from the edit), removes states of removed jobs, and
    /// closes runs whose process is gone.
    func synchronizeStates(now: Date) {
        guard loaded else { return }
        for job in jobs {
            do {
                var state = try store.read(job.id)
                if state == nil {
                    var s = JobState(created: now)
                    s.schedule = job.schedule.text
                    s.enabled = job.enabled
                    try store.write(job.id, s)
                    state = s
                    continue
                }
                var s = state!
                var changed = false
                if s.schedule != job.schedule.text || s.enabled != job.enabled {
                    if s.schedule != nil || s.enabled != nil { s.updated = now }
                    s.schedule = job.schedule.text
                    s.enabled = job.enabled
                    changed = true
                }
                if s.isRunning, current == nil, s.lastRun!.pid.map({ $0 == getpid() || !ProcessCheck.alive($0) }) ?? true {
                    s.lastRun!.result = .failed
                    s.lastRun!.end = s.lastRun!.end ?? now
                    s.lastRun!.error = "aborted: the process running the job ended"
                    s.lastRun!.pid = nil
                    changed = true
                }
                if changed { try store.write(job.id, s) }
            } catch {
                logger.error("job \(job.id): state: \(error)")
            }
        }
        let ids = Set(jobs.map(\.id))
        for id in store.ids() where !ids.contains(id) { store.remove(id) }
    }

    /// A logger that drops everything (`job run` prints the task log instead).
    public static var silentLogger: Logger { Logger(label: "snapdump", factory: { _ in SwiftLogNoOpLogHandler() }) }

    static func localHostname() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count) == 0 else { return "localhost" }
        let name = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(name.split(separator: ".").first ?? Substring(name))
    }
}
