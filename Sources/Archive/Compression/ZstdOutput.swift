import CZstd
import SnapdumpSystem

/// Streaming zstd compression through libzstd (`ZSTD_compressStream2`),
/// multithreaded with `ZSTD_c_nbWorkers`, content checksum on.
final class ZstdOutput: CompressingOutput {
    private let file: any OutputSink
    private let cctx: OpaquePointer
    private let out: UnsafeMutableRawBufferPointer
    private(set) var fileOffset: UInt64
    private(set) var bytesIn: UInt64 = 0

    init(file: any OutputSink, startOffset: UInt64, level: Int32, workers: Int32) throws(ArchiveError) {
        guard let cctx = ZSTD_createCCtx() else {
            throw ArchiveError(.compression, path: file.path, "ZSTD_createCCtx failed")
        }
        self.cctx = cctx
        self.file = file
        self.fileOffset = startOffset
        self.out = .allocate(byteCount: max(ZSTD_CStreamOutSize(), 1 << 20), alignment: 64)
        try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level), "compression level \(level)")
        try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1), "checksum flag")
        if workers > 0 {
            try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, workers), "\(workers) workers")
        }
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        out.deallocate()
    }

    private func check(_ r: Int, _ what: String) throws(ArchiveError) {
        if ZSTD_isError(r) != 0 {
            throw ArchiveError(.compression, path: file.path, "zstd: \(what): \(String(cString: ZSTD_getErrorName(r)))")
        }
    }

    private func drain(_ output: ZSTD_outBuffer) throws(ArchiveError) {
        guard output.pos > 0 else { return }
        try writeFile(file, UnsafeRawBufferPointer(rebasing: out[0..<output.pos]), at: fileOffset)
        fileOffset += UInt64(output.pos)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        guard bytes.count > 0 else { return }
        var input = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
        while input.pos < input.size {
            var output = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
            let r = ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_continue)
            try check(r, "compress")
            try drain(output)
        }
        bytesIn += UInt64(bytes.count)
    }

    func finish() throws(ArchiveError) -> UInt64 {
        var input = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while true {
            var output = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
            let remaining = ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_end)
            try check(remaining, "end frame")
            try drain(output)
            if remaining == 0 { break }
        }
        return fileOffset
    }
}
