#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import SnapdumpSystem

/// snapdumpd's log lines on stderr, one line per event.
///
/// Under systemd, stderr is a stream to the journal (`JOURNAL_STREAM` names
/// it): each line then starts with sd-daemon's priority prefix (`<3>` for an
/// error) and has no timestamp, because the journal stamps every line itself.
/// So `journalctl -u snapdumpd -p err` shows exactly the failed jobs and the
/// rejected jobs.cfg. Elsewhere (a terminal, a pipe) a line is
/// `2026-11-30 02:00:00 ERROR: …`.
public struct DaemonLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    /// Whether lines carry `<N>` prefixes (journal) or timestamps (elsewhere).
    public let journal: Bool
    private let write: @Sendable (String) -> Void

    public init(journal: Bool, write: @escaping @Sendable (String) -> Void) {
        self.journal = journal
        self.write = write
    }

    /// The handler for the process's stderr, in journal style when stderr is the journal.
    public static func standardError(environment: [String: String] = ProcessInfo.processInfo.environment) -> DaemonLogHandler {
        DaemonLogHandler(journal: stderrIsJournal(environment: environment)) { line in
            line.withCString { p in _ = Glibc.write(2, p, strlen(p)) }
        }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        write(Self.line(level: event.level, message: "\(event.message)", metadata: all, journal: journal, date: Date()))
    }

    /// sd-daemon(3) priorities: the syslog levels.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// One line, newline-terminated. A message's own line breaks become
    /// spaces: the journal would file a second line as a separate event at
    /// the default priority.
    static func line(level: Logger.Level, message: String, metadata: Logger.Metadata, journal: Bool, date: Date) -> String {
        var text = message
        if !metadata.isEmpty {
            text += " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        text = String(text.map { $0.isNewline ? " " : $0 })
        if journal { return "<\(priority(level))>\(text)\n" }
        return "\(timestamp(date)) \(label(level)): \(text)\n"
    }

    static func label(_ level: Logger.Level) -> String {
        switch level {
        case .trace, .debug: return "DEBUG"
        case .info: return "INFO"
        case .notice: return "NOTICE"
        case .warning: return "WARN"
        case .error: return "ERROR"
        case .critical: return "CRITICAL"
        }
    }

    static func timestamp(_ date: Date) -> String { CivilTime(date, .local).spaced }

    /// systemd's rule: `JOURNAL_STREAM` is `<device>:<inode>` of the stream
    /// it connected; stderr is the journal only when it is still that stream
    /// (not redirected by whoever started us).
    static func stderrIsJournal(environment: [String: String]) -> Bool {
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return journalStream(environment["JOURNAL_STREAM"], matchesDevice: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    static func journalStream(_ value: String?, matchesDevice device: UInt64, inode: UInt64) -> Bool {
        guard let value else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let d = UInt64(parts[0]), let i = UInt64(parts[1]) else { return false }
        return d == device && i == inode
    }
}
