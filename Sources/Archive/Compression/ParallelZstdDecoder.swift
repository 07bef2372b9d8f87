import CShims
import CZstd
import Foundation
import SnapdumpSystem

/// Decompresses a zstd file on background threads, delivering the stream in
/// order to the one caller of `read`.
///
/// A *splitter* thread reads the file in order (through a mapping when it
/// is a regular file: `ArchiveMapping`) and finds where each frame ends
/// (`ZSTD_findFrameCompressedSize`, which walks the block headers); each
/// complete frame of at most `maxFrameOutput` decompressed bytes
/// (`ZSTD_decompressBound`, 64 MiB) becomes a piece that the first free of
/// `workers` threads decompresses in one call. snapdump writes 16 MiB frames
/// (`ZstdOutput`), so both cores decompress while the caller verifies and
/// writes. A frame too big for that — the single frame of a Proxmox archive
/// or of an older snapdump one — is decompressed by the splitter itself as a
/// stream, in pieces of `streamPieceSize`: still on a thread of its own,
/// beside the caller.
///
/// Memory is bounded whatever the archive says: at most workers + 1 pieces
/// are in flight (decoded, decoding or read), each holding at most its
/// compressed frame and `maxFrameOutput` bytes; buffers are reused.
final class ParallelZstdDecoder: StreamDecoder {
    private let shared: Shared
    private var current: Piece?
    private var currentPos = 0

    /// Sizes that bound memory; small ones in tests reach every path with small archives.
    struct Limits: Sendable {
        /// Frames that decompress to more than this are streamed by the splitter.
        var maxFrameOutput = 64 << 20
        /// A frame not ended within this many compressed bytes is streamed.
        var maxFrameInput = 64 << 20
        var readSize = 4 << 20
        var streamPieceSize = 8 << 20
        /// Read a regular file through a mapping (tests turn it off to compare).
        var mapArchive = true
        static let standard = Limits()
    }

    init(file: File, workers: Int = ParallelZstdDecoder.defaultWorkers, limits: Limits = .standard) throws(ArchiveError) {
        precondition(workers >= 1 && limits.streamPieceSize <= limits.maxFrameOutput)
        // One piece per worker and the one the caller reads (bounds peak RSS).
        shared = Shared(file: file, maxPieces: workers + 1, limits: limits)
        try shared.start(workers: workers)
    }

    deinit {
        if let current { shared.release(current) }
        shared.stop()
    }

    /// One per core, two to three: the caller (SHA-256, writes) cannot take
    /// more than three decompress, and each worker holds up to two frames'
    /// buffers in flight.
    static var defaultWorkers: Int { min(3, max(2, ProcessInfo.processInfo.activeProcessorCount)) }

    func borrow(_ count: Int, streamOffset: UInt64) throws(ArchiveError) -> UnsafeRawBufferPointer? {
        if let piece = current, currentPos == piece.count {
            shared.release(piece)
            current = nil
        }
        if current == nil {
            guard let next = try shared.next(streamOffset: streamOffset) else { return nil }
            current = next
            currentPos = 0
        }
        guard let piece = current, piece.count - currentPos >= count else { return nil }
        defer { currentPos += count }
        return UnsafeRawBufferPointer(start: piece.output!.baseAddress! + currentPos, count: count)
    }

    func read(into dst: UnsafeMutableRawBufferPointer, streamOffset: UInt64) throws(ArchiveError) -> Int {
        var filled = 0
        while filled < dst.count {
            if let piece = current, currentPos < piece.count {
                let n = min(dst.count - filled, piece.count - currentPos)
                (dst.baseAddress! + filled).copyMemory(from: piece.output!.baseAddress! + currentPos, byteCount: n)
                currentPos += n
                filled += n
                continue
            }
            if let piece = current {
                shared.release(piece)
                current = nil
            }
            guard let next = try shared.next(streamOffset: streamOffset + UInt64(filled)) else { break }
            current = next
            currentPos = 0
        }
        return filled
    }
}

/// A frame (or, for a frame streamed by the splitter, part of one) in stream order.
private final class Piece {
    enum State { case queued, decoding, done }
    /// Where its frame starts in the file, for error messages.
    let fileOffset: UInt64
    var state: State
    /// The whole compressed frame, while queued or decoding: in a buffer of
    /// its own, or in the archive's mapping (`mapped`, no copy).
    var input: Buffer?
    var mapped: UnsafeRawPointer?
    var inputCount = 0
    var output: UnsafeMutableRawBufferPointer?
    var count = 0
    /// libzstd's error for this frame, turned into an ArchiveError by the reader, who knows the stream offset.
    var failure: String?
    var failureCode = ArchiveError.Code.compression

    init(fileOffset: UInt64, state: State) {
        self.fileOffset = fileOffset
        self.state = state
    }

    /// Buffers still held go with the piece: one the reader never released
    /// (it stopped at an error) or one of a frame that failed to decode.
    deinit {
        input?.free()
        output.map { Glibc.free($0.baseAddress!) }
    }
}

/// malloc'd memory: pages count as resident only once touched, so a buffer
/// sized for the largest frame costs what the frames really use.
private struct Buffer {
    let base: UnsafeMutableRawPointer
    let capacity: Int

    init(capacity: Int) {
        base = malloc(capacity)!
        self.capacity = capacity
    }

    func free() { Glibc.free(base) }
}

/// A ZSTD_DCtx handed to the one thread that uses it.
private final class DecompressionContext: @unchecked Sendable {
    // @unchecked: used by exactly one thread after it is created.
    let dctx: OpaquePointer
    init?() {
        guard let d = ZSTD_createDCtx() else { return nil }
        dctx = d
    }
    deinit { ZSTD_freeDCtx(dctx) }
}

private final class Shared: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`, except the
    // splitter's own read state (used by the splitter thread only).

    /// ZSTD_CONTENTSIZE_ERROR, a macro Swift does not import.
    static let contentSizeError = UInt64.max - 1

    let file: File
    let maxPieces: Int
    private let lock = NSCondition()
    private let threads = DispatchGroup()
    private var pieces: [Piece] = []
    /// Pieces queued and not yet released by the reader.
    private var outstanding = 0
    private var splitterDone = false
    private var splitterError: (@Sendable (UInt64) -> ArchiveError)?
    private var cancelled = false
    private var outputPool: [UnsafeMutableRawBufferPointer] = []
    private var inputPool: [Buffer] = []

    let limits: ParallelZstdDecoder.Limits
    /// The archive mapped read-only when it is a regular file: frames are
    /// decompressed straight from the page cache, without pread's copy.
    /// Set before the threads start, never changed.
    let mapping: ArchiveMapping?

    init(file: File, maxPieces: Int, limits: ParallelZstdDecoder.Limits) {
        self.file = file
        self.maxPieces = maxPieces
        self.limits = limits
        mapping = limits.mapArchive ? ArchiveMapping(file) : nil
    }

    deinit {
        // Pieces free their own buffers (Piece.deinit); the pools are ours.
        for b in outputPool { Glibc.free(b.baseAddress!) }
        for b in inputPool { b.free() }
    }

    func start(workers: Int) throws(ArchiveError) {
        var contexts: [DecompressionContext] = []
        for _ in 0..<(workers + 1) {
            guard let d = DecompressionContext() else { throw ArchiveError(.compression, path: file.path, "ZSTD_createDCtx failed") }
            contexts.append(d)
        }
        let splitter = contexts.removeLast()
        spawn("zstd-split") { [self] in split(splitter.dctx) }
        for (i, d) in contexts.enumerated() {
            spawn("zstd-\(i)") { [self] in work(d.dctx) }
        }
    }

    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let t = Thread { [threads] in
            body()
            threads.leave()
        }
        t.name = name
        t.start()
    }

    /// Stops the threads and waits for them: nothing touches the file or the buffers afterwards.
    func stop() {
        lock.lock()
        cancelled = true
        lock.broadcast()
        lock.unlock()
        threads.wait()
    }

    // MARK: reader side

    /// The next piece in stream order once it is decoded; nil at the end.
    func next(streamOffset: UInt64) throws(ArchiveError) -> Piece? {
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let p = pieces.first, p.state == .done {
                pieces.removeFirst()
                if let failure = p.failure {
                    throw ArchiveError(p.failureCode, path: file.path, offset: streamOffset,
                                       "zstd frame at file offset \(p.fileOffset): \(failure)")
                }
                return p
            }
            if pieces.isEmpty && splitterDone {
                if let e = splitterError { throw e(streamOffset) }
                return nil
            }
            lock.wait()
        }
    }

    /// The reader is done with `piece`: its buffer goes back to the pool.
    func release(_ piece: Piece) {
        lock.lock()
        if let out = piece.output { outputPool.append(out) }
        piece.output = nil
        outstanding -= 1
        lock.broadcast()
        lock.unlock()
    }

    // MARK: workers

    private func work(_ dctx: OpaquePointer) {
        lock.lock()
        while true {
            if cancelled { break }
            guard let p = pieces.first(where: { $0.state == .queued }) else {
                if splitterDone { break }
                lock.wait()
                continue
            }
            p.state = .decoding
            let output = takeOutput()
            lock.unlock()
            let source = p.mapped ?? UnsafeRawPointer(p.input!.base)
            var bus: Int32 = 0
            let r = p.mapped == nil
                ? ZSTD_decompressDCtx(dctx, output.baseAddress, output.count, source, p.inputCount)
                : snapdump_zstd_decompress_mapped(UnsafeMutableRawPointer(dctx), output.baseAddress, output.count, source, p.inputCount, &bus)
            if p.mapped != nil { mapping?.dropPages(source, count: p.inputCount) }
            lock.lock()
            p.output = output
            if bus != 0 {
                p.failure = ArchiveMapping.unreadable
                p.failureCode = .io
            } else if ZSTD_isError(r) != 0 {
                p.failure = String(cString: ZSTD_getErrorName(r))
            } else {
                p.count = r
            }
            if let input = p.input { inputPool.append(input) }
            p.input = nil
            p.mapped = nil
            p.state = .done
            lock.broadcast()
        }
        lock.unlock()
    }

    /// Under `lock`.
    private func takeOutput() -> UnsafeMutableRawBufferPointer {
        if let b = outputPool.popLast() { return b }
        return UnsafeMutableRawBufferPointer(start: malloc(limits.maxFrameOutput)!, count: limits.maxFrameOutput)
    }

    // MARK: splitter

    /// Waits for room for one more piece; false when cancelled. Under `lock`.
    private func waitForRoom() -> Bool {
        while outstanding >= maxPieces && !cancelled { lock.wait() }
        return !cancelled
    }

    /// Queues `piece` once there is room; false (and its buffers back in the pools) when cancelled.
    private func enqueue(_ piece: Piece) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard waitForRoom() else {
            recycleLocked(piece)
            return false
        }
        pieces.append(piece)
        outstanding += 1
        lock.broadcast()
        return true
    }

    private func recycle(_ piece: Piece) {
        lock.lock()
        recycleLocked(piece)
        lock.unlock()
    }

    private func recycleLocked(_ piece: Piece) {
        if let out = piece.output { outputPool.append(out) }
        if let input = piece.input { inputPool.append(input) }
        piece.output = nil
        piece.input = nil
    }

    private func takeInput() -> Buffer {
        lock.lock()
        defer { lock.unlock() }
        return inputPool.popLast() ?? Buffer(capacity: limits.maxFrameInput + limits.readSize)
    }

    private func finishSplitting(_ error: (@Sendable (UInt64) -> ArchiveError)?) {
        lock.lock()
        splitterDone = true
        splitterError = error
        lock.broadcast()
        lock.unlock()
    }

    private var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }

    private struct SplitError: Error {
        let make: @Sendable (UInt64) -> ArchiveError
    }

    /// Reads into `buffer` at `count`; 0 at the end of the file.
    private func fill(_ buffer: Buffer, from count: Int, fileOffset: UInt64) throws(SplitError) -> Int {
        let room = UnsafeMutableRawBufferPointer(start: buffer.base + count, count: min(limits.readSize, buffer.capacity - count))
        do {
            return try file.read(into: room, at: fileOffset)
        } catch {
            let path = file.path, cause = error as? SystemError
            throw SplitError { ArchiveError(.io, path: path, offset: $0, "cannot read at file offset \(fileOffset)", cause: cause) }
        }
    }

    private func split(_ dctx: OpaquePointer) {
        var start: UInt64 = 0
        if let mapping {
            do throws(SplitError) {
                guard let rest = try splitMapped(mapping) else { return finishSplitting(nil) }
                start = rest
            } catch {
                return finishSplitting(error.make)
            }
        }
        var buffer = takeInput()
        var count = 0
        var eof = false
        let path = file.path
        do throws(SplitError) {
            while !isCancelled {
                if count > 0 {
                    let size = ZSTD_findFrameCompressedSize(buffer.base, count)
                    if ZSTD_isError(size) == 0 {
                        let bound = ZSTD_decompressBound(buffer.base, size)
                        if bound != Self.contentSizeError && bound <= UInt64(limits.maxFrameOutput) {
                            // A complete frame: it keeps this buffer; what follows it moves to a new one.
                            let piece = Piece(fileOffset: start, state: .queued)
                            let next = takeInput()
                            next.base.copyMemory(from: buffer.base + size, byteCount: count - size)
                            piece.input = buffer
                            piece.inputCount = size
                            buffer = next
                            count -= size
                            start += UInt64(size)
                            guard enqueue(piece) else { break }
                        } else {
                            try stream(dctx, &buffer, &count, &start, &eof)
                        }
                        continue
                    }
                    if ZSTD_getErrorCode(size) != ZSTD_error_srcSize_wrong {
                        let frame = start, name = String(cString: ZSTD_getErrorName(size))
                        throw SplitError { ArchiveError(.compression, path: path, offset: $0, "zstd frame at file offset \(frame): \(name)") }
                    }
                    if count >= limits.maxFrameInput {
                        try stream(dctx, &buffer, &count, &start, &eof)
                        continue
                    }
                }
                if eof {
                    if count > 0 {
                        let frame = start
                        throw SplitError { ArchiveError(.truncated, path: path, offset: $0, "zstd frame at file offset \(frame) is cut short: unexpected end of archive") }
                    }
                    break
                }
                let n = try fill(buffer, from: count, fileOffset: start + UInt64(count))
                if n == 0 { eof = true }
                count += n
            }
            buffer.free()
            finishSplitting(nil)
        } catch {
            buffer.free()
            finishSplitting(error.make)
        }
    }

    /// Queues the frames of the mapped archive in order, each pointing into
    /// the mapping. Returns the file offset where the buffered splitter takes
    /// over — a frame to stream (too big for one piece, or not ended within
    /// `maxFrameInput`) — or nil when every frame is queued (or cancelled).
    private func splitMapped(_ mapping: ArchiveMapping) throws(SplitError) -> UInt64? {
        let path = file.path
        var start = 0
        while start < mapping.count {
            if isCancelled { return nil }
            let window = min(mapping.count - start, limits.maxFrameInput)
            let base = mapping.base + start
            var bound: UInt64 = 0, bus: Int32 = 0
            let size = snapdump_zstd_find_frame_mapped(base, window, &bound, &bus)
            if bus != 0 {
                let frame = start
                throw SplitError { ArchiveError(.io, path: path, offset: $0, "zstd frame at file offset \(frame): \(ArchiveMapping.unreadable)") }
            }
            if ZSTD_isError(size) != 0 {
                if ZSTD_getErrorCode(size) != ZSTD_error_srcSize_wrong {
                    let frame = start, name = String(cString: ZSTD_getErrorName(size))
                    throw SplitError { ArchiveError(.compression, path: path, offset: $0, "zstd frame at file offset \(frame): \(name)") }
                }
                if window == mapping.count - start {
                    let frame = start
                    throw SplitError { ArchiveError(.truncated, path: path, offset: $0, "zstd frame at file offset \(frame) is cut short: unexpected end of archive") }
                }
                // Finding no end walked the window's block headers: their pages go.
                mapping.dropPages(base, count: window)
                return UInt64(start)
            }
            guard bound != Self.contentSizeError && bound <= UInt64(limits.maxFrameOutput) else {
                mapping.dropPages(base, count: size)
                return UInt64(start)
            }
            let piece = Piece(fileOffset: UInt64(start), state: .queued)
            piece.mapped = base
            piece.inputCount = size
            guard enqueue(piece) else { return nil }
            start += size
        }
        return nil
    }

    /// Decompresses the frame at the start of `buffer` as a stream, reading
    /// more of the file into `buffer` as needed; leaves what follows the
    /// frame at the start of `buffer`.
    private func stream(_ dctx: OpaquePointer, _ buffer: inout Buffer, _ count: inout Int, _ start: inout UInt64,
                        _ eof: inout Bool) throws(SplitError) {
        let path = file.path, frame = start
        ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only)
        var input = ZSTD_inBuffer(src: buffer.base, size: count, pos: 0)
        var ended = false
        while !ended {
            lock.lock()
            guard waitForRoom() else { lock.unlock(); return }
            let output = takeOutput()
            lock.unlock()
            let piece = Piece(fileOffset: frame, state: .done)
            piece.output = output
            var out = ZSTD_outBuffer(dst: output.baseAddress, size: limits.streamPieceSize, pos: 0)
            while out.pos < out.size {
                if input.pos == input.size {
                    start += UInt64(input.size)
                    count = 0
                    let n = try fill(buffer, from: 0, fileOffset: start)
                    if n == 0 {
                        eof = true
                        piece.failure = "cut short: unexpected end of archive"
                        break
                    }
                    count = n
                    input = ZSTD_inBuffer(src: buffer.base, size: n, pos: 0)
                }
                let r = ZSTD_decompressStream(dctx, &out, &input)
                if ZSTD_isError(r) != 0 {
                    piece.failure = String(cString: ZSTD_getErrorName(r))
                    break
                }
                if r == 0 {
                    ended = true
                    break
                }
            }
            piece.count = out.pos
            if let failure = piece.failure {
                // The data before the failure is delivered, then the error.
                piece.failure = nil
                if out.pos > 0 {
                    guard enqueue(piece) else { return }
                } else {
                    recycle(piece)
                }
                let code: ArchiveError.Code = failure.hasPrefix("cut short") ? .truncated : .compression
                throw SplitError { ArchiveError(code, path: path, offset: $0, "zstd frame at file offset \(frame): \(failure)") }
            }
            guard enqueue(piece) else { return }
        }
        // What follows the frame moves to the start of the buffer.
        let rest = input.size - input.pos
        if rest > 0 { buffer.base.copyMemory(from: buffer.base + input.pos, byteCount: rest) }
        start += UInt64(input.pos)
        count = rest
    }
}

/// A regular file mapped read-only for the splitter and the workers. Pages
/// are read ahead (MADV_SEQUENTIAL) and dropped from this process once their
/// frame is decoded (MADV_DONTNEED: they stay in the page cache), so peak RSS
/// holds only the frames in flight, not the archive.
final class ArchiveMapping: @unchecked Sendable {
    // @unchecked: immutable after init; the mapping is only read.
    let base: UnsafeRawPointer
    let count: Int
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// Why a frame of the mapping could not be read: a SIGBUS, caught around
    /// the zstd call (CShims), where `pread` would have returned EIO or 0.
    static let unreadable = "cannot be read: the archive file was cut short or its disk failed while it was read (SIGBUS on its mapping)"

    /// nil when `file` is not a non-empty regular file or mmap fails: the
    /// caller reads it instead.
    init?(_ file: File) {
        guard !file.isStream else { return nil }
        var st = stat()
        guard fstat(file.fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size > 0,
              let p = mmap(nil, Int(st.st_size), PROT_READ, MAP_SHARED, file.fd, 0), p != MAP_FAILED
        else { return nil }
        base = UnsafeRawPointer(p)
        count = Int(st.st_size)
        madvise(p, count, MADV_SEQUENTIAL)
    }

    /// The pages wholly inside `bytes` leave this process's RSS; a later
    /// access (the frame next to it shares its edge pages) faults them in again.
    func dropPages(_ start: UnsafeRawPointer, count: Int) {
        let size = Self.pageSize
        let lo = (Int(bitPattern: start) + size - 1) / size * size
        let hi = (Int(bitPattern: start) + count) / size * size
        if hi > lo { madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, MADV_DONTNEED) }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), count) }
}
