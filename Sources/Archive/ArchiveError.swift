/// An archive that cannot be written or read: which archive, where in its
/// (decompressed) byte stream, and why.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// Not a VMA archive at all (unknown magic, wrong version).
        case notAnArchive
        /// The stream ends before the archive does.
        case truncated
        /// A header or extent MD5 does not match.
        case checksum
        /// A structural rule of the format is broken (bounds, counts, uuid).
        case format
        /// A cluster appears twice, or never.
        case duplicateCluster, missingCluster
        /// The compressor or decompressor reported an error.
        case compression
        /// A feature snapdump does not implement (lzo).
        case unsupported
        /// A caller passed something the format cannot hold.
        case invalidArgument
        /// Reading or writing the file failed.
        case io
        /// A device's content digest does not match snapdump.json.
        case digestMismatch
    }

    public var code: Code
    /// The archive file (the `.dat` file while writing).
    public var path: String
    /// Byte offset in the decompressed VMA stream, when it is known.
    public var offset: UInt64?
    public var message: String
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, path: String, offset: UInt64? = nil, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.path = path
        self.offset = offset
        self.message = message
        self.cause = cause
    }

    public var description: String {
        var s = "\(path): \(message)"
        if let offset { s += " at offset \(offset)" }
        if let cause { s += ": \(cause)" }
        return s
    }

    static func truncated(_ path: String, at offset: UInt64) -> ArchiveError {
        ArchiveError(.truncated, path: path, offset: offset, "unexpected end of archive")
    }
}
