/// Why a guest-agent operation failed.
public enum GuestAgentError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The agent socket cannot be reached: missing (VM not running, or
    /// started without `agent: 1`), refused, or its path is unusable.
    case unavailable(path: String, reason: String)
    /// The agent did not answer `command` within `seconds` — no agent is
    /// running in the guest, or it is stuck.
    case timeout(command: String, seconds: Double)
    /// The agent refused the command: its error class and text.
    case commandFailed(class: String, desc: String)
    /// The connection ended before the answer arrived.
    case connectionClosed
    /// The agent sent something that is not a valid answer.
    case protocolError(String)

    public var description: String {
        switch self {
        case let .unavailable(path, reason): return "guest agent socket '\(path)' unavailable: \(reason)"
        case let .timeout(command, seconds):
            let s = seconds.rounded() == seconds ? "\(Int(seconds))" : "\(seconds)"
            return "guest agent did not answer '\(command)' within \(s) s (is qemu-ga running in the guest?)"
        case let .commandFailed(cls, desc): return "guest agent command failed: \(desc) (\(cls))"
        case .connectionClosed: return "guest agent connection closed"
        case .protocolError(let detail): return "guest agent protocol error: \(detail)"
        }
    }
}
