/// A repository operation that failed: what kind of failure, the object it is
/// about (chunk digest, snapshot, index or key file), why, and the cause.
public struct RepositoryError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// Not a repository, or a file in it is not what its name says (bad magic, size).
        case format
        /// A CRC, digest or index checksum does not match: the data is corrupt.
        case corrupt
        /// A chunk an index references is missing from the chunk store.
        case missingChunk
        /// The snapshot, guest or file asked for does not exist.
        case notFound
        /// Already exists (repository init, snapshot time).
        case exists
        /// Another process holds the lock.
        case locked
        /// Encrypted data without the key, the wrong key, or a bad passphrase.
        case crypt
        /// The filesystem is full.
        case noSpace
        /// Reading or writing failed.
        case io
        /// The caller passed something the format cannot hold.
        case invalidArgument
    }

    public var code: Code
    /// What the error is about: "chunk 3f1c…", "snapshot vm/100/2026-11-30T02:00:00Z", a path.
    public var object: String
    public var message: String
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ object: String, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.object = object
        self.message = message
        self.cause = cause
    }

    public var description: String {
        var s = "\(object): \(message)"
        if let cause { s += ": \(cause)" }
        return s
    }

    /// Wraps a failed system call, keeping ENOSPC recognisable.
    static func io(_ object: String, _ message: String, _ error: any Error) -> RepositoryError {
        if let e = error as? RepositoryError { return e }
        let noSpace = (error as? SystemError)?.isNoSpace ?? false
        return RepositoryError(noSpace ? .noSpace : .io, object, "\(message): \(error)")
    }
}

import SnapdumpSystem
