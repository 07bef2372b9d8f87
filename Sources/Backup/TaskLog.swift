import Foundation
import SnapdumpSystem

/// A backup's log, in vzdump's style: `INFO: …` / `WARN: …` / `ERROR: …`
/// lines to stderr, and the same lines with a timestamp to the `.log` file
/// beside the archive. Thread-safe: progress comes from the pipeline thread.
public final class TaskLog: @unchecked Sendable {
    // @unchecked: all mutable state is behind `lock`.
    public enum Level: String, Sendable { case info = "INFO", warn = "WARN", error = "ERROR" }

    private let lock = NSLock()
    private var file: File?
    private var buffered: [String] = []
    private let echo: Bool
    public private(set) var lines: [String] = []
    public private(set) var warnings = 0

    private let parent: TaskLog?
    /// `--output-format json`: what is echoed to stderr is one JSON object per
    /// line (`{"type":"log",…}`, `{"type":"progress",…}`), as `restic --json`
    /// streams its status; the `.log` file keeps vzdump's text lines.
    public let jsonEvents: Bool

    /// `echo`: also write to stderr (off with --quiet, or in tests).
    /// `parent`: a job log that receives this guest's lines too (without echoing them twice).
    public init(echo: Bool = true, parent: TaskLog? = nil, jsonEvents: Bool = false) {
        self.echo = echo
        self.parent = parent
        self.jsonEvents = jsonEvents || (parent?.jsonEvents ?? false)
    }

    /// From now on lines also go to `path`, a new file (root-only) that this
    /// log creates: an existing file or a symlink at `path` is an error
    /// (`SystemError` with EEXIST), never appended to, so two backups never
    /// share a log. Lines logged before are written first.
    public func attach(file path: String) throws {
        let f = try File.createNew(path)
        lock.lock()
        defer { lock.unlock() }
        file = f
        for l in buffered { try? f.writeAll(Array((l + "\n").utf8)) }
        buffered.removeAll()
    }

    public func detach() {
        lock.lock()
        defer { lock.unlock() }
        try? file?.sync()
        try? file?.close()
        file = nil
    }

    public func info(_ message: String) { log(.info, message) }
    public func warn(_ message: String) { log(.warn, message) }
    public func error(_ message: String) { log(.error, message) }

    /// A progress line: INFO text in the file, a `progress` event with `event`'s numbers in JSON mode.
    public func progress(_ message: String, event: [String: Double]) {
        log(.info, message, event: event)
    }

    public func log(_ level: Level, _ message: String) { log(level, message, event: nil) }

    private func log(_ level: Level, _ message: String, event: [String: Double]?) {
        let line = "\(level.rawValue): \(message)"
        let stamped = "\(Self.timestamp()) \(line)"
        lock.lock()
        defer { lock.unlock() }
        if level == .warn { warnings += 1 }
        lines.append(line)
        if let file { try? file.writeAll(Array((stamped + "\n").utf8)) } else { buffered.append(stamped) }
        if echo {
            let out = jsonEvents ? Self.jsonEvent(level, message, event) : line
            FileHandle.standardError.write(Data((out + "\n").utf8))
        }
        parent?.record(line)
    }

    /// Appends `text` as it is to the file only (no level, no timestamp, no
    /// echo): for copying another log into this one.
    public func appendToFile(_ text: String) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let file else { throw BackupError("task log has no file to append to") }
        try file.writeAll(Array(text.utf8))
    }

    /// Keeps a child's line in this log's memory without echoing it again.
    func record(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }

    /// Local time now, `2026-11-30 02:00:00` (vzdump's log stamp).
    static func timestamp() -> String { CivilTime.now(.local).spaced }

    static func jsonEvent(_ level: Level, _ message: String, _ event: [String: Double]?) -> String {
        var fields: [(String, Any)] = [("type", event == nil ? "log" : "progress"), ("level", level.rawValue), ("message", message)]
        for (k, v) in (event ?? [:]).sorted(by: { $0.key < $1.key }) { fields.append((k, v)) }
        let obj = Dictionary(uniqueKeysWithValues: fields.map { ($0.0, $0.1) })
        guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return "{\"type\":\"log\"}"
        }
        return String(decoding: data, as: UTF8.self)
    }
}
