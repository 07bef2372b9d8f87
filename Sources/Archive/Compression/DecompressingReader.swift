import CZlib
import CZstd
import SnapdumpSystem
#if canImport(Glibc)
import Glibc
#endif

/// Reads an archive file as its decompressed byte stream. The format is
/// detected from the first bytes (zstd, gzip, raw VMA; lzop is refused).
/// Concatenated zstd frames and gzip members are one stream. zstd is
/// decompressed on background threads, frames in parallel
/// (`ParallelZstdDecoder`); gzip and raw VMA are read on the caller's thread,
/// straight into its buffer.
public final class DecompressingReader {
    public let path: String
    public let compression: Compression.Kind
    /// Decompressed bytes delivered so far.
    public private(set) var offset: UInt64 = 0

    private let file: File
    private let decoder: any StreamDecoder

    /// Opens `path` and detects its format. Only a regular file is an
    /// archive: it is opened non-blocking (so a FIFO cannot hang the open)
    /// and refused unless fstat says it is a regular file.
    public convenience init(path: String) throws(ArchiveError) {
        let file: File
        do {
            file = try File.open(path, O_RDONLY | O_NONBLOCK)
        } catch {
            throw ArchiveError(.io, path: path, "cannot open archive", cause: error as? SystemError)
        }
        var st = stat()
        guard fstat(file.fd, &st) == 0 else {
            throw ArchiveError(.io, path: path, "cannot stat archive", cause: SystemError("fstat", path))
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw ArchiveError(.invalidArgument, path: path, "not a regular file (\(Self.fileType(st.st_mode))): refusing to read it as an archive")
        }
        _ = fcntl(file.fd, F_SETFL, O_RDONLY)
        try self.init(file: file)
    }

    static func fileType(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "mode \(String(mode & S_IFMT, radix: 8))"
        }
    }

    /// Reads the already open `file` from offset 0.
    public convenience init(file: File) throws(ArchiveError) {
        try self.init(file: file, zstdLimits: .standard)
    }

    init(file: File, zstdLimits: ParallelZstdDecoder.Limits) throws(ArchiveError) {
        self.file = file
        self.path = file.path
        var head = [UInt8](repeating: 0, count: 4)
        let n: Int
        do {
            n = try head.withUnsafeMutableBytes { (b) throws in try file.read(into: b, at: 0) }
        } catch {
            throw ArchiveError(.io, path: file.path, "cannot read", cause: error as? SystemError)
        }
        guard let kind = Compression.detect(head[0..<n]) else {
            if n < 4 { throw ArchiveError.truncated(file.path, at: UInt64(n)) }
            throw ArchiveError(.notAnArchive, path: file.path,
                               "not a VMA archive (unknown magic \(Hex.encode(head)))")
        }
        compression = kind
        switch kind {
        case .none: decoder = RawDecoder(file: file)
        case .zstd: decoder = try ParallelZstdDecoder(file: file, limits: zstdLimits)
        case .gzip: decoder = try GzipDecoder(file: file)
        case .lzo: throw ArchiveError(.unsupported, path: file.path, Compression.lzoUnsupported)
        }
    }

    /// Fills `buffer` completely, or as far as the stream goes; returns the
    /// bytes read (0 at the end). A stream cut inside a compressed frame or
    /// member throws "unexpected end of archive".
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(ArchiveError) -> Int {
        guard buffer.count > 0 else { return 0 }
        let n = try decoder.read(into: buffer, streamOffset: offset)
        offset += UInt64(n)
        return n
    }

    /// The next `count` bytes without a copy, when the decoder holds them in
    /// one piece (zstd frames): valid until the next `read` or `borrow`. nil
    /// when it does not; then `read` them.
    public func borrow(count: Int) throws(ArchiveError) -> UnsafeRawBufferPointer? {
        guard let b = try decoder.borrow(count, streamOffset: offset) else { return nil }
        offset += UInt64(count)
        return b
    }

    /// Reads exactly `buffer.count` bytes; a short stream throws
    /// "unexpected end of archive at offset N".
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(ArchiveError) {
        let start = offset
        let n = try read(into: buffer)
        if n < buffer.count { throw ArchiveError.truncated(path, at: start + UInt64(n)) }
    }

    /// Reads exactly `count` bytes into a new array (headers, not the hot path).
    public func readExactly(count: Int) throws(ArchiveError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { buffer.deallocate() }
        try readExactly(into: buffer)
        return Array(buffer)
    }
}

protocol StreamDecoder: AnyObject {
    /// As `DecompressingReader.read`; `streamOffset` is for error messages.
    func read(into dst: UnsafeMutableRawBufferPointer, streamOffset: UInt64) throws(ArchiveError) -> Int
    /// As `DecompressingReader.borrow`.
    func borrow(_ count: Int, streamOffset: UInt64) throws(ArchiveError) -> UnsafeRawBufferPointer?
}

extension StreamDecoder {
    func borrow(_ count: Int, streamOffset: UInt64) throws(ArchiveError) -> UnsafeRawBufferPointer? { nil }
}

/// Compressed input read with pread into one reused buffer.
struct CompressedSource {
    let file: File
    var buffer: UnsafeMutableRawBufferPointer
    var fileOffset: UInt64 = 0
    var eof = false

    init(file: File) {
        self.file = file
        buffer = .allocate(byteCount: 1 << 20, alignment: 64)
    }

    func deallocate() { buffer.deallocate() }

    /// Reads the next piece of the file; returns its length (0 at end of file).
    mutating func refill() throws(ArchiveError) -> Int {
        let n: Int
        do {
            n = try file.read(into: buffer, at: fileOffset)
        } catch {
            throw ArchiveError(.io, path: file.path, "cannot read at file offset \(fileOffset)", cause: error as? SystemError)
        }
        fileOffset += UInt64(n)
        if n == 0 { eof = true }
        return n
    }
}

final class RawDecoder: StreamDecoder {
    let file: File
    var fileOffset: UInt64 = 0
    init(file: File) { self.file = file }

    func read(into dst: UnsafeMutableRawBufferPointer, streamOffset: UInt64) throws(ArchiveError) -> Int {
        do {
            let n = try file.read(into: dst, at: fileOffset)
            fileOffset += UInt64(n)
            return n
        } catch {
            throw ArchiveError(.io, path: file.path, offset: streamOffset, "cannot read", cause: error as? SystemError)
        }
    }
}

final class GzipDecoder: StreamDecoder {
    // zlib keeps a pointer back to its z_stream: it must not move.
    private let stream: UnsafeMutablePointer<z_stream>
    private var source: CompressedSource
    private var inMember = false

    init(file: File) throws(ArchiveError) {
        source = CompressedSource(file: file)
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let r = inflateInit2_(stream, 15 + 16, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        if r != Z_OK {
            stream.deallocate()
            source.deallocate()
            throw ArchiveError(.compression, path: file.path, "inflateInit2 failed (\(r))")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
        source.deallocate()
    }

    func read(into dst: UnsafeMutableRawBufferPointer, streamOffset: UInt64) throws(ArchiveError) -> Int {
        var filled = 0
        while filled < dst.count {
            if stream.pointee.avail_in == 0 && !source.eof {
                let n = try source.refill()
                stream.pointee.next_in = source.buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_in = UInt32(n)
            }
            if stream.pointee.avail_in == 0 && source.eof && !inMember { break }
            if stream.pointee.avail_in > 0 { inMember = true }
            let room = min(dst.count - filled, Int(UInt32.max))
            stream.pointee.next_out = (dst.baseAddress! + filled).assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = UInt32(room)
            let availBefore = stream.pointee.avail_in
            let r = inflate(stream, Z_NO_FLUSH)
            let produced = room - Int(stream.pointee.avail_out)
            filled += produced
            switch r {
            case Z_STREAM_END:
                // End of one member: the next one (if any) continues the stream.
                inMember = false
                inflateReset(stream)
            case Z_OK:
                break
            case Z_BUF_ERROR:
                if stream.pointee.avail_in == 0 && source.eof && produced == 0 && availBefore == 0 {
                    throw ArchiveError.truncated(source.file.path, at: streamOffset + UInt64(filled))
                }
            default:
                let msg = stream.pointee.msg.map { String(cString: $0) } ?? "error \(r)"
                throw ArchiveError(.compression, path: source.file.path, offset: streamOffset + UInt64(filled), "gzip: \(msg)")
            }
        }
        return filled
    }
}
