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

    /// From now on lines also go to `path`; lines logged before are written first.
    public func attach(file path: String) throws {
        let f = try File.open(path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o644)
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

    /// Keeps a child's line in this log's memory without echoing it again.
    func record(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }

    static func timestamp() -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return f.string(from: Date())
    }

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
