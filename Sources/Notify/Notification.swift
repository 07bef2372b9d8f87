import Foundation

/// Severities as Proxmox VE's notification system names them.
public enum Severity: String, Sendable, CaseIterable, Codable {
    case info, notice, warning, error, unknown
}

/// One event to tell someone about: a backup job's outcome, or a test.
///
/// `fields` are the metadata matchers look at (`type`, `hostname`, `job-id`,
/// `vmid`). A field can have several values — a job backs up several guests —
/// and a matcher on it matches if any value does.
public struct NotificationEvent: Sendable {
    public var severity: Severity
    public var title: String
    public var message: String
    public var fields: [String: [String]]
    public var timestamp: Date

    public init(severity: Severity, title: String, message: String, fields: [String: [String]] = [:], timestamp: Date = Date()) {
        self.severity = severity
        self.title = title
        self.message = message
        self.fields = fields
        self.timestamp = timestamp
    }
}

/// A notification target or matcher that cannot be used; names the object.
public struct NotifyError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
