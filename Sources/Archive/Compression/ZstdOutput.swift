import CZstd
import SnapdumpSystem

/// Streaming zstd compression through libzstd (`ZSTD_compressStream2`),
/// multithreaded with `ZSTD_c_nbWorkers`, content checksum on.
///
/// The stream is cut into independent frames of `frameSize` uncompressed
/// bytes each (the last one shorter): a standard multi-frame file that
/// `zstd -d` and Proxmox's tools read as one stream, and that a restore can
/// decompress frame by frame on several cores (`ParallelZstdDecoder`).
final class ZstdOutput: CompressingOutput {
    /// 16 MiB: the ratio loss against one frame is 0.06 % on a disk of real
    /// data (0.02 % at 32 MiB; BENCHMARKS.md), and a restore holding three
    /// frames and their compressed input stays well under 256 MiB (at 32
    /// MiB it peaked at 266–285 MiB).
    static let defaultFrameSize = 16 << 20

    private let file: any OutputSink
    private let cctx: OpaquePointer
    private let out: UnsafeMutableRawBufferPointer
    private let frameSize: UInt64
    /// Uncompressed bytes in the frame being written.
    private var frameBytes: UInt64 = 0
    private(set) var fileOffset: UInt64
    private(set) var bytesIn: UInt64 = 0
    /// Frames ended so far.
    private(set) var frames = 0

    init(file: any OutputSink, startOffset: UInt64, level: Int32, workers: Int32, frameSize: Int = ZstdOutput.defaultFrameSize) throws(ArchiveError) {
        precondition(frameSize > 0)
        guard let cctx = ZSTD_createCCtx() else {
            throw ArchiveError(.compression, path: file.path, "ZSTD_createCCtx failed")
        }
        self.cctx = cctx
        self.file = file
        self.fileOffset = startOffset
        self.frameSize = UInt64(frameSize)
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
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var done = 0
        while done < bytes.count {
            let n = Int(min(UInt64(bytes.count - done), frameSize - frameBytes))
            var input = ZSTD_inBuffer(src: base + done, size: n, pos: 0)
            while input.pos < input.size {
                var output = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                try check(ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_continue), "compress")
                try drain(output)
            }
            done += n
            frameBytes += UInt64(n)
            if frameBytes == frameSize { try endFrame() }
        }
        bytesIn += UInt64(bytes.count)
    }

    private func endFrame() throws(ArchiveError) {
        var input = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while true {
            var output = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
            let remaining = ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_end)
            try check(remaining, "end frame")
            try drain(output)
            if remaining == 0 { break }
        }
        frames += 1
        frameBytes = 0
    }

    /// Appends `frame`, a whole zstd frame compressed elsewhere from
    /// `uncompressedBytes` of the stream (`VMASegmentEncoder`), after ending
    /// the frame in progress: the file stays a sequence of independent frames.
    func appendFrame(_ frame: UnsafeRawBufferPointer, uncompressedBytes: UInt64) throws(ArchiveError) {
        if frameBytes > 0 { try endFrame() }
        try writeFile(file, frame, at: fileOffset)
        fileOffset += UInt64(frame.count)
        bytesIn += uncompressedBytes
        frames += 1
    }

    func finish() throws(ArchiveError) -> UInt64 {
        // A stream that ended exactly at a frame boundary has nothing left to end.
        if frameBytes > 0 || frames == 0 { try endFrame() }
        return fileOffset
    }
}
