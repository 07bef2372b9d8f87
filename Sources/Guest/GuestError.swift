/// An error of the Guest module: which VM, what kind of failure, a message
/// naming the VM, and the underlying cause (a `QMPError`, `SystemError`,
/// `ConfigError`, …) when there is one.
public struct GuestError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, Equatable {
        /// No config for this VMID.
        case notFound
        /// The config has a `lock:`; the lock's name is in the message.
        case locked
        case alreadyRunning
        case notRunning
        /// The config cannot be turned into a QEMU command line.
        case invalidConfig
        /// A disk, kernel or initrd named by the config is missing.
        case missingFile
        /// QEMU did not start, or did not answer after starting.
        case startFailed
        /// The VM did not reach the wanted state in time.
        case timeout
        /// A QMP command failed.
        case qmp
        /// An operating-system call failed.
        case system
        /// The request does not fit the VM (unknown disk, a CD-ROM, same storage and format).
        case invalidArgument
        /// A storage operation failed (unknown storage, allocation, free).
        case storage
        /// Stopped by SIGINT/SIGTERM; everything done so far was undone.
        case interrupted
    }

    public var vmid: Int
    public var code: Code
    /// A full sentence naming the VM: `VM 100 is locked (backup)`.
    public var message: String
    public var cause: (any Error & Sendable)?

    public init(vmid: Int, _ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.vmid = vmid
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        if let cause { return "\(message): \(cause)" }
        return message
    }

    /// A cause known only by its text (a launch failure, a lock timeout).
    public struct Detail: Error, CustomStringConvertible, Sendable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// The error for a config with `lock: <name>`.
    public static func locked(_ vmid: Int, _ lock: String) -> GuestError {
        GuestError(vmid: vmid, .locked, "VM \(vmid) is locked (\(lock))")
    }
}
