import SnapdumpSystem

/// A sink for the VMA byte stream that compresses (or not) and writes to a
/// file at increasing offsets with positional writes. Not thread-safe: one
/// writer thread feeds it (libzstd may use its own worker threads inside).
protocol CompressingOutput: AnyObject {
    /// Compresses and writes all of `bytes`.
    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError)
    /// Ends the compressed stream and writes what is left; returns the file
    /// offset just past the last byte written.
    func finish() throws(ArchiveError) -> UInt64
    /// Uncompressed bytes accepted so far.
    var bytesIn: UInt64 { get }
    /// File offset of the next byte to be written.
    var fileOffset: UInt64 { get }
}

/// Writes bytes as they are.
final class PlainOutput: CompressingOutput {
    private let file: any OutputSink
    private(set) var fileOffset: UInt64
    private(set) var bytesIn: UInt64 = 0

    init(file: any OutputSink, startOffset: UInt64) {
        self.file = file
        self.fileOffset = startOffset
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        try writeFile(file, bytes, at: fileOffset)
        fileOffset += UInt64(bytes.count)
        bytesIn += UInt64(bytes.count)
    }

    func finish() throws(ArchiveError) -> UInt64 { fileOffset }
}

/// pwrite with the error mapped to ArchiveError. A `streaming` file (a
/// pipe: `backup --stdout`) cannot seek: its bytes are written in order at
/// its current position, and the offsets only count them.
func writeFile(_ file: any OutputSink, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(ArchiveError) {
    do {
        if let stream = file as? File, stream.isStream { try stream.writeAll(bytes) } else { try file.write(bytes, at: offset) }
    } catch {
        throw ArchiveError(.io, path: file.path, "cannot write", cause: error as? SystemError)
    }
}

/// Creates the output for `compression`, starting at `startOffset` of `file`.
func makeOutput(_ compression: Compression, file: any OutputSink, startOffset: UInt64) throws(ArchiveError) -> any CompressingOutput {
    switch compression {
    case .none: return PlainOutput(file: file, startOffset: startOffset)
    case .gzip: return try GzipOutput(file: file, startOffset: startOffset, level: 6)
    case .zstd(let level, let workers): return try ZstdOutput(file: file, startOffset: startOffset, level: level, workers: workers)
    case .lzo: throw ArchiveError(.unsupported, path: file.path, Compression.lzoUnsupported)
    }
}
