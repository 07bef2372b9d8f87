#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An operating-system call that failed: which call, on what object, and errno.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public var operation: String
    public var object: String
    public var errno: Int32

    public init(_ operation: String, _ object: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.object = object
        self.errno = errno
    }

    public var reason: String { String(cString: strerror(errno)) }

    public var description: String { "\(operation) '\(object)' failed: \(reason)" }

    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}
