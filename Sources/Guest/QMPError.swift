/// Why a QMP operation failed. Each cause is its own case so callers can
/// react: a refused command is not a dead QEMU.
public enum QMPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// QEMU refused the command: its error class (`GenericError`,
    /// `CommandNotFound`, `DeviceNotFound`, …) and text.
    case commandFailed(class: String, desc: String)
    /// The connection ended (QEMU exited, the socket was closed) before a
    /// reply arrived.
    case connectionClosed
    /// No reply (or no greeting, or no awaited event) within the time allowed;
    /// names the command.
    case timeout(String)
    /// QEMU (or whatever is on the socket) sent something that is not QMP:
    /// malformed JSON, a message of unknown shape, a missing greeting.
    case protocolError(String)
    /// The socket could not be reached (missing, refused, path too long).
    case unavailable(String)

    public var description: String {
        switch self {
        case let .commandFailed(cls, desc): return "QMP command failed: \(desc) (\(cls))"
        case .connectionClosed: return "QMP connection closed"
        case .timeout(let what): return "QMP timeout waiting for '\(what)'"
        case .protocolError(let detail): return "QMP protocol error: \(detail)"
        case .unavailable(let detail): return "QMP socket unavailable: \(detail)"
        }
    }
}
