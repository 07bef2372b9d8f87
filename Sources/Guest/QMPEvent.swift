/// An asynchronous QMP event (`STOP`, `RESUME`, `SHUTDOWN`,
/// `BLOCK_JOB_READY`, `JOB_STATUS_CHANGE`, …).
public struct QMPEvent: Sendable, Equatable {
    /// The event name, e.g. `BLOCK_JOB_COMPLETED`.
    public var name: String
    /// The event's `data` member; `.null` when it has none.
    public var data: JSONValue
    /// QEMU's timestamp, seconds since the epoch; nil if absent.
    public var timestamp: Double?

    public init(name: String, data: JSONValue = .null, timestamp: Double? = nil) {
        self.name = name
        self.data = data
        self.timestamp = timestamp
    }

    /// Parses `{"event": …, "data": …, "timestamp": {"seconds", "microseconds"}}`.
    init?(_ message: JSONValue) {
        guard let name = message["event"]?.stringValue else { return nil }
        self.name = name
        self.data = message["data"] ?? .null
        if let ts = message["timestamp"], let s = ts["seconds"]?.doubleValue {
            self.timestamp = s + (ts["microseconds"]?.doubleValue ?? 0) / 1e6
        } else {
            self.timestamp = nil
        }
    }
}
