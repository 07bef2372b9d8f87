import ArgumentParser
import Backup
import Foundation
import Scheduler
import SnapdumpConfig
import SnapdumpSystem

/// `snapdump job …`: scheduled backup jobs in jobs.cfg (Proxmox's /cluster/backup).
struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Scheduled backup jobs (jobs.cfg): add, list, show, set, remove, run.",
        subcommands: [JobAdd.self, JobList.self, JobShow.self, JobSet.self, JobRemove.self, JobRun.self]
    )
}

/// The job keys that are not backup options.
struct JobScheduleArguments: ParsableArguments {
    @Option(help: "Calendar event, e.g. 'sat 02:00' or 'mon..fri 22:30' (see 'snapdump schedule analyze').")
    var schedule: String?
    @Option(help: "1 to run the job on schedule, 0 to keep it but not run it.") var enabled: String?
    @Option(help: "A description of the job.") var comment: String?
    @Option(name: .customLong("repeat-missed"), help: "1: an event missed while snapdumpd was down runs once at start-up; 0 (default): skipped.")
    var repeatMissed: String?
    @Option(help: "VMIDs to back up, comma-separated.") var vmid: String?

    func properties() -> [(key: String, value: String)] {
        var p: [(String, String)] = []
        if let schedule { p.append(("schedule", schedule)) }
        if let enabled { p.append(("enabled", enabled)) }
        if let comment { p.append(("comment", comment)) }
        if let repeatMissed { p.append(("repeat-missed", repeatMissed)) }
        if let vmid { p.append(("vmid", vmid)) }
        return p
    }

    /// The schedule parses; every value fits on its jobs.cfg line; booleans are Proxmox's.
    func validate() throws {
        for (k, v) in properties() {
            if let problem = ConfigValue.problem(v) { throw CLIError("--\(k): \(problem)") }
        }
        for (k, v) in [("enabled", enabled), ("repeat-missed", repeatMissed)] {
            if let v, ConfigValue.bool(v) == nil { throw CLIError("--\(k): invalid value '\(v)': expected 0 or 1") }
        }
        if let vmid { do { _ = try BackupParameters.vmidList(vmid, key: "vmid") } catch { throw CLIError("--vmid: \(error)") } }
        guard let schedule else { return }
        do { _ = try CalendarEvent(schedule) } catch let e as CalendarEventError { throw CLIError(e) }
    }
}

/// Turns a jobs.cfg error about a command-line edit into a plain message.
func jobError(_ error: Error) -> Error {
    if let e = error as? ConfigError { return CLIError(e.message) }
    return error
}

struct JobIDArgument: ParsableArguments {
    @Argument(help: "Job id.") var id: String
}

enum JobFormat {
    static func time(_ d: Date?) -> String { d.map { CivilTime($0, .local).spaced } ?? "-" }

    /// The next event after the job's reference time (now for a job the scheduler has not seen yet).
    static func next(_ job: BackupJobDefinition, state: JobState?) -> Date? {
        guard job.enabled else { return nil }
        return job.schedule.next(after: state?.reference ?? Date(), in: .current)
    }

    static func nextText(_ job: BackupJobDefinition, state: JobState?) -> String {
        guard let n = next(job, state: state) else { return job.enabled ? "never" : "-" }
        return time(n) + (n < Date() ? " (due)" : "")
    }

    static func lastRun(_ state: JobState?) -> String {
        guard let r = state?.lastRun else { return "-" }
        let result = r.result?.rawValue ?? "running"
        return "\(time(r.start)) (\(result))"
    }
}

struct JobAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a backup job.")

    @OptionGroup var global: GlobalOptions
    @Option(help: "Job id (default: backup- and 12 hex digits).") var id: String?
    @OptionGroup var job: JobScheduleArguments
    @OptionGroup var options: BackupOptionArguments

    func validate() throws {
        guard job.schedule != nil else { throw ValidationError("--schedule is required") }
        if let id, !BackupJobDefinition.isValidID(id) {
            throw ValidationError("invalid job id '\(id)': a letter, then letters, digits, '-' or '_'")
        }
        try job.validate()
        try options.validateValues()
    }

    func run() throws {
        let id = self.id ?? BackupJobDefinition.generateID()
        var section = SectionConfig.Section(type: BackupJobDefinition.sectionType, id: id)
        for (k, v) in job.properties() + options.properties() { section[k] = v }
        do {
            try JobsConfig.edit(paths: global.paths) { cfg in
                try cfg.add(try BackupJobDefinition(section: section, file: cfg.file))
            }
        } catch { throw jobError(error) }
        print("added job \(id)")
    }
}

struct JobList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List jobs: schedule, next run, last run and its result.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        let cfg = try JobsConfig.load(paths: global.paths)
        let store = JobStateStore(paths: global.paths)
        let records = cfg.jobs.map { j -> OutputRecord in
            let state = (try? store.read(j.id)) ?? nil
            var r = OutputRecord()
            r.add("id", "ID", .string(j.id))
            r.add("schedule", "Schedule", .string(j.schedule.text))
            r.add("enabled", "Enabled", .bool(j.enabled), text: j.enabled ? "yes" : "no")
            r.add("next-run", "Next run", .of(JobFormat.next(j, state: state)), text: JobFormat.nextText(j, state: state))
            r.add("last-run", "Last run", .of(state?.lastRun?.start), text: JobFormat.lastRun(state))
            r.add("last-result", nil, .of(state?.lastRun.map { $0.result?.rawValue ?? "running" }))
            r.add("comment", "Comment", .of(j.comment), text: j.comment ?? "")
            return r
        }
        Output.list(records, output.format, columns: ["ID", "Schedule", "Enabled", "Next run", "Last run", "Comment"])
    }
}

struct JobShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a job's configuration and state.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var jobID: JobIDArgument
    @OptionGroup var output: OutputOptions

    func run() throws {
        let cfg = try JobsConfig.load(paths: global.paths)
        guard let j = cfg.job(jobID.id) else { throw CLIError("no job '\(jobID.id)' in \(cfg.file)") }
        let state = try JobStateStore(paths: global.paths).read(j.id)
        if output.format != .text {
            var r = OutputRecord()
            r.add("id", nil, .string(j.id))
            for p in j.section.properties { r.add(p.key, nil, .string(p.value)) }
            r.add("next-run", nil, .of(JobFormat.next(j, state: state)))
            if let last = state?.lastRun {
                var l = OutputRecord()
                l.add("start", nil, .of(last.start))
                l.add("end", nil, .of(last.end))
                l.add("trigger", nil, .string(last.trigger ?? "schedule"))
                l.add("result", nil, .string(last.result?.rawValue ?? "running"))
                l.add("error", nil, .of(last.error))
                l.add("archives", nil, .list(last.archives.map(OutputValue.string)))
                l.add("task-log", nil, .of(last.taskLog))
                r.add("last-run", nil, .record(l))
            } else {
                r.add("last-run", nil, .null)
            }
            Output.object(r, output.format) { "" }
            return
        }
        print(SectionConfig(sections: [j.section]).serialized(), terminator: "")
        print("next run: \(JobFormat.nextText(j, state: state))")
        guard let r = state?.lastRun else {
            print("last run: never")
            return
        }
        print("last run: \(JobFormat.time(r.start)) (\(r.trigger ?? "schedule"))")
        print("  ended: \(JobFormat.time(r.end))")
        print("  result: \(r.result?.rawValue ?? "running")" + (r.error.map { " - \($0)" } ?? ""))
        for a in r.archives { print("  archive: \(a)") }
        if let t = r.taskLog { print("  task log: \(t)") }
    }
}

struct JobSet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Change a job; --delete removes keys.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var jobID: JobIDArgument
    @OptionGroup var job: JobScheduleArguments
    @OptionGroup var options: BackupOptionArguments
    @Option(help: "Keys to remove, comma-separated (e.g. 'comment,bwlimit').") var delete: String?

    func validate() throws {
        try job.validate()
        try options.validateValues()
    }

    func run() throws {
        let set = job.properties() + options.properties()
        let delete = self.delete.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? []
        if set.isEmpty && delete.isEmpty { throw ValidationError("nothing to change: give options to set or --delete") }
        do {
            try JobsConfig.edit(paths: global.paths) { cfg in try cfg.update(jobID.id, set: set, delete: delete) }
        } catch { throw jobError(error) }
        print("updated job \(jobID.id)")
    }
}

struct JobRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a job (its archives stay).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var jobID: JobIDArgument

    func run() throws {
        do {
            try JobsConfig.edit(paths: global.paths) { cfg in try cfg.remove(jobID.id) }
        } catch { throw jobError(error) }
        JobStateStore(paths: global.paths).remove(jobID.id)
        print("removed job \(jobID.id)")
    }
}

struct JobRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a job now, through the backup engine.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var jobID: JobIDArgument

    func run() async throws {
        let paths = global.paths
        let cfg = try JobsConfig.load(paths: paths)
        guard let job = cfg.job(jobID.id) else { throw CLIError("no job '\(jobID.id)' in \(cfg.file)") }
        let store = JobStateStore(paths: paths)
        if let s = try store.read(job.id), s.isRunning, let pid = s.lastRun?.pid, kill(pid, 0) == 0 {
            throw CLIError("job '\(job.id)' is running (pid \(pid))")
        }
        let quiet = (try? job.parameters.effective(paths: paths).options.quiet) ?? false
        let scheduler = Scheduler(paths: paths, runner: BackupJobRunner(echo: !quiet), logger: Scheduler.silentLogger)
        let signals = [SIGINT, SIGTERM].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { Task { await scheduler.shutdown() } }
            s.resume()
            return s
        }
        defer { signals.forEach { $0.cancel() } }
        let outcome = await scheduler.runJob(job, trigger: "manual")
        let state = try store.read(job.id)
        for a in outcome.archives { print("archive: \(a)") }
        if let t = state?.lastRun?.taskLog { print("task log: \(t)") }
        print("result: \(outcome.ok ? "ok" : "failed")" + (outcome.error.map { " - \($0)" } ?? ""))
        if !outcome.ok { throw ExitCode(1) }
    }
}
