#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// What the scheduler remembers about a job between runs and restarts, as
/// Proxmox keeps `/var/lib/pve-manager/jobs/vzdump-<id>.json`: when the job
/// was created, when its schedule last changed, and its last run.
///
/// The time the next event is computed from is `updated` (schedule or
/// `enabled` changed, or `repeat-missed 0` at scheduler start), else the last
/// run's start, else `created` — the same rule as Proxmox's `get_last_runtime`.
public struct JobState: Codable, Sendable, Equatable {
    public enum Result: String, Codable, Sendable {
        case ok, failed
    }

    public struct Run: Codable, Sendable, Equatable {
        public var start: Date
        public var end: Date?
        /// nil while running.
        public var result: Result?
        public var error: String?
        /// Archive paths written by the run.
        public var archives: [String] = []
        public var taskLog: String?
        /// "schedule", "repeat-missed" or "manual".
        public var trigger: String?
        /// The process running it (to tell a live run from one killed with its scheduler).
        public var pid: Int32?

        public init(start: Date, trigger: String?, taskLog: String?, pid: Int32?) {
            self.start = start
            self.trigger = trigger
            self.taskLog = taskLog
            self.pid = pid
        }
    }

    public var created: Date
    public var updated: Date?
    /// `schedule` and `enabled` as last seen, to notice edits.
    public var schedule: String?
    public var enabled: Bool?
    public var lastRun: Run?

    public init(created: Date) { self.created = created }

    /// The instant the next event is computed from.
    public var reference: Date { updated ?? lastRun?.start ?? created }

    public var isRunning: Bool { lastRun != nil && lastRun!.result == nil }
}

/// Job state files: `<config-dir>/jobs/<id>.json`, written atomically; task
/// logs in `<config-dir>/jobs/log/<id>/<YYYY_MM_DD-HH_MM_SS>.log`.
public struct JobStateStore: Sendable {
    public let directory: String
    /// Task logs kept per job.
    public var keepLogs = 20

    public init(paths: SnapdumpPaths) { directory = paths.configDir + "/jobs" }
    public init(directory: String) { self.directory = directory }

    public func path(_ id: String) -> String { "\(directory)/\(id).json" }
    public func logDirectory(_ id: String) -> String { "\(directory)/log/\(id)" }

    public func read(_ id: String) throws -> JobState? {
        let p = path(id)
        guard FileSystem.exists(p) else { return nil }
        let text = try FileSystem.readText(p)
        do {
            return try Self.decoder.decode(JobState.self, from: Data(text.utf8))
        } catch {
            throw ConfigError(file: p, "invalid job state: \(error)")
        }
    }

    public func write(_ id: String, _ state: JobState) throws {
        try FileSystem.createDirectory(directory)
        let data = try Self.encoder.encode(state)
        try FileSystem.writeAtomically(path(id), String(decoding: data, as: UTF8.self) + "\n")
    }

    /// Reads, changes and writes one state; a missing state starts as created now.
    @discardableResult
    public func update(_ id: String, now: Date, _ change: (inout JobState) -> Void) throws -> JobState {
        var s = (try? read(id)) ?? nil ?? JobState(created: now)
        change(&s)
        try write(id, s)
        return s
    }

    public func remove(_ id: String) {
        try? FileSystem.remove(path(id))
    }

    /// Ids that have a state file.
    public func ids() -> [String] {
        ((try? FileSystem.list(directory)) ?? []).compactMap { $0.hasSuffix(".json") ? String($0.dropLast(5)) : nil }
    }

    /// A new task log path for a run of `id` starting at `date` (local time in the name, as archives).
    public func newTaskLog(_ id: String, date: Date) throws -> String {
        let dir = logDirectory(id)
        try FileSystem.createDirectory(dir)
        let base = CivilTime(date, .local).underscored
        var name = base
        var n = 1
        while FileSystem.exists("\(dir)/\(name).log") { n += 1; name = "\(base).\(n)" }
        pruneLogs(id)
        return "\(dir)/\(name).log"
    }

    /// Keeps the newest `keepLogs - 1` task logs of a job (a new one follows).
    func pruneLogs(_ id: String) {
        let dir = logDirectory(id)
        let logs = ((try? FileSystem.list(dir)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
        guard logs.count >= keepLogs else { return }
        for old in logs.prefix(logs.count - keepLogs + 1) { try? FileSystem.remove("\(dir)/\(old)") }
    }

    static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }

    static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

enum ProcessCheck {
    /// Whether a process with this pid exists.
    static func alive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }
}
