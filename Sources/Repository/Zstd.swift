import CZstd

/// One-shot zstd for blobs (a chunk is at most a few MiB, so no streaming).
enum Zstd {
    /// `src` compressed at `level`, or nil when the result is not smaller
    /// (a blob then stores the data uncompressed, as PBS does).
    static func compressIfSmaller(_ src: UnsafeRawBufferPointer, level: Int32 = 1) -> [UInt8]? {
        guard src.count > 0 else { return nil }
        let bound = ZSTD_compressBound(src.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { dst in
            ZSTD_compress(dst.baseAddress, bound, src.baseAddress, src.count, level)
        }
        guard ZSTD_isError(n) == 0, n < src.count else { return nil }
        out.removeSubrange(n...)
        return out
    }

    /// Decompresses one or more frames, refusing output past `limit` bytes.
    static func decompress(_ src: UnsafeRawBufferPointer, limit: Int) throws -> [UInt8] {
        guard let ctx = ZSTD_createDStream() else { throw ZstdFailure(message: "out of memory") }
        defer { ZSTD_freeDStream(ctx) }
        let known = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        var capacity = known <= UInt64(limit) ? Int(known) : min(limit, 4 << 20)
        var out = [UInt8](repeating: 0, count: max(capacity, 1))
        var input = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
        var produced = 0
        while true {
            if produced == capacity {
                guard capacity < limit else { throw ZstdFailure(message: "decompressed size exceeds \(limit) bytes") }
                capacity = min(limit, max(capacity * 2, 1 << 16))
                out.append(contentsOf: repeatElement(0, count: capacity - out.count))
            }
            let (ret, pos): (Int, Int) = out.withUnsafeMutableBytes { dst in
                var output = ZSTD_outBuffer(dst: dst.baseAddress, size: capacity, pos: produced)
                let r = ZSTD_decompressStream(ctx, &output, &input)
                return (r, output.pos)
            }
            if ZSTD_isError(ret) != 0 {
                throw ZstdFailure(message: String(cString: ZSTD_getErrorName(ret)))
            }
            produced = pos
            if ret == 0 && input.pos == input.size { break }
            if input.pos == input.size && produced < capacity {
                throw ZstdFailure(message: "truncated zstd frame")
            }
        }
        out.removeSubrange(produced...)
        return out
    }
}

struct ZstdFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { "zstd: \(message)" }
}
