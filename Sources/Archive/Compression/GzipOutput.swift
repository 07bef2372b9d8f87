import CZlib
import SnapdumpSystem

/// Streaming gzip compression through zlib (`deflateInit2` with the gzip
/// wrapper, windowBits 15 + 16).
final class GzipOutput: CompressingOutput {
    private let file: any OutputSink
    // zlib keeps a pointer back to its z_stream: it must not move.
    private let stream: UnsafeMutablePointer<z_stream>
    private let out: UnsafeMutableRawBufferPointer
    private(set) var fileOffset: UInt64
    private(set) var bytesIn: UInt64 = 0

    init(file: any OutputSink, startOffset: UInt64, level: Int32) throws(ArchiveError) {
        self.file = file
        self.fileOffset = startOffset
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        out = .allocate(byteCount: 1 << 18, alignment: 64)
        let r = deflateInit2_(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
                              zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        if r != Z_OK {
            stream.deallocate()
            out.deallocate()
            throw ArchiveError(.compression, path: file.path, "deflateInit2 failed (\(r))")
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
        out.deallocate()
    }

    private func run(_ flush: Int32) throws(ArchiveError) -> Int32 {
        stream.pointee.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = UInt32(out.count)
        let r = deflate(stream, flush)
        if r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR {
            throw ArchiveError(.compression, path: file.path, "deflate failed (\(r))")
        }
        let produced = out.count - Int(stream.pointee.avail_out)
        if produced > 0 {
            try writeFile(file, UnsafeRawBufferPointer(rebasing: out[0..<produced]), at: fileOffset)
            fileOffset += UInt64(produced)
        }
        return r
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        // avail_in is 32 bits: feed at most 1 GiB at a time.
        var done = 0
        while done < bytes.count {
            let n = min(bytes.count - done, 1 << 30)
            stream.pointee.next_in = UnsafeMutablePointer(mutating: (base + done).assumingMemoryBound(to: Bytef.self))
            stream.pointee.avail_in = UInt32(n)
            repeat {
                _ = try run(Z_NO_FLUSH)
            } while stream.pointee.avail_in > 0 || stream.pointee.avail_out == 0
            done += n
        }
        stream.pointee.next_in = nil
        bytesIn += UInt64(bytes.count)
    }

    func finish() throws(ArchiveError) -> UInt64 {
        while try run(Z_FINISH) != Z_STREAM_END {}
        return fileOffset
    }
}
