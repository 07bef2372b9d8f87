import CZstd
import Foundation
import SnapdumpSystem

/// zstd compression of the VMA stream as independent frames, each compressed
/// whole (`ZSTD_compress2`) by a single-threaded context, `workers` frames at
/// once on threads of its own (0: on the caller's thread); content checksum on.
///
/// The file is a standard multi-frame file that `zstd -d` and Proxmox's tools
/// read as one stream, and that a restore decompresses frame by frame on
/// several cores (`ParallelZstdDecoder`).
///
/// Why not libzstd's own workers (`ZSTD_c_nbWorkers`, BENCHMARKS.md "Issue
/// 15"): ending a frame (`ZSTD_e_end`) waited for every job of that frame,
/// so a core idled at each frame's tail, and libzstd copied the whole stream
/// into its job buffers. Here the VMA writer builds its extents straight in
/// the frame's buffer (`reserve`/`commit`), a worker compresses from it, and
/// a writer thread writes finished frames in order: no frame waits for
/// another to be compressed, and neither the caller nor a worker waits on the device.
///
/// Frames: through `reserve`/`commit` a frame holds whole extents, at most
/// `frameSize` bytes (a frame is ended when the next extent might not fit);
/// through `write` frames are exactly `frameSize` bytes. The last is shorter.
///
/// Memory: `workers + 2` frame buffers (one filling, one per worker, one
/// queued or being written), each with room for its compressed frame: at
/// `--zstd 2` 4 × 16 MiB plus what the frames compress to (at most 4 × 16 MiB),
/// whatever the disk size.
final class ZstdOutput: CompressingOutput, ExtentBuffering, @unchecked Sendable {
    // @unchecked: the caller's fields are used by one thread at a time (the
    // VMA writer's); what the threads share is in `Frames`.

    /// 16 MiB: the ratio loss against one frame is 0.06 % on a disk of real
    /// data (0.02 % at 32 MiB; BENCHMARKS.md), and a restore holding three
    /// frames and their compressed input stays well under 256 MiB (at 32
    /// MiB it peaked at 266–285 MiB).
    static let defaultFrameSize = 16 << 20

    private let frameSize: Int
    private let inline: Bool
    /// What the threads share. They hold it, not the output: the output's
    /// deinit stops them (a thread holding the output would keep it alive).
    private let shared: Frames

    private var current: Int?
    private var filled = 0
    var fileOffset: UInt64 { shared.fileOffset }
    private(set) var bytesIn: UInt64 = 0
    /// Frames ended so far.
    private(set) var frames = 0

    /// Tests only: called on the compressing thread before frame `n` (0-based)
    /// is compressed; a returned message fails that frame. Set before the first write.
    var beforeFrame: (@Sendable (Int) -> String?)? {
        get { shared.lock { shared.beforeFrame } }
        set { shared.lock { shared.beforeFrame = newValue } }
    }

    /// The kernel name of this output's threads: "sd-zstd-0"…, "sd-zstd-write".
    static let threadPrefix = "sd-zstd-"

    init(file: any OutputSink, startOffset: UInt64, level: Int32, workers: Int32, frameSize: Int = ZstdOutput.defaultFrameSize) throws(ArchiveError) {
        precondition(frameSize > 0)
        self.frameSize = frameSize
        let threads = max(0, Int(workers))
        inline = threads == 0
        shared = try Frames(file: file, startOffset: startOffset, level: level, contexts: max(1, threads),
                            slots: threads == 0 ? 1 : threads + 2, frameSize: frameSize)
        guard threads > 0 else { return }
        shared.start(workers: threads, namePrefix: Self.threadPrefix)
    }

    deinit { shared.stop() }

    /// Stops the workers and the writer, waiting for a frame being compressed
    /// or written: after this nothing more is written (the archive is being removed).
    func cancel() { shared.stop() }

    /// The slot being filled; takes a free one, waiting while every buffer is
    /// queued, being compressed or written.
    private func currentSlot() throws(ArchiveError) -> Frames.Slot {
        if let current { return shared.slots[current] }
        let free = try shared.takeFreeSlot()
        current = free
        filled = 0
        return shared.slots[free]
    }

    /// Hands the frame being filled to a worker (or compresses and writes it here).
    private func endFrame() throws(ArchiveError) {
        let slot = try currentSlot()
        guard let index = current else { return }
        slot.length = filled
        slot.frame = frames
        slot.streamOffset = bytesIn - UInt64(filled)
        current = nil
        filled = 0
        frames += 1
        if inline {
            try shared.compressAndWrite(index)
        } else {
            shared.enqueue(index)
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try shared.checkFailure()
        var done = 0
        while done < bytes.count {
            let slot = try currentSlot()
            let n = min(bytes.count - done, frameSize - filled)
            (slot.input.baseAddress! + filled).copyMemory(from: base + done, byteCount: n)
            filled += n
            done += n
            bytesIn += UInt64(n)
            if filled == frameSize { try endFrame() }
        }
    }

    func reserve(_ count: Int) throws(ArchiveError) -> UnsafeMutableRawBufferPointer {
        precondition(count <= frameSize, "reserve(\(count)) beyond a frame of \(frameSize)")
        try shared.checkFailure()
        if current != nil && frameSize - filled < count { try endFrame() }
        let slot = try currentSlot()
        return UnsafeMutableRawBufferPointer(rebasing: slot.input[filled..<filled + count])
    }

    func commit(_ count: Int) throws(ArchiveError) {
        precondition(current != nil && filled + count <= frameSize, "commit(\(count)) without room reserved")
        filled += count
        bytesIn += UInt64(count)
    }

    func finish() throws(ArchiveError) -> UInt64 {
        try shared.checkFailure()
        // A stream that ended exactly at a frame boundary has nothing left to end.
        if (current != nil && filled > 0) || frames == 0 { try endFrame() }
        return try shared.waitForAll()
    }
}

/// ZstdOutput's frame buffers, contexts and threads: the workers compress
/// queued frames, the writer writes finished ones in stream order.
private final class Frames: @unchecked Sendable {
    // @unchecked: a slot's buffers belong to one thread at a time — the caller
    // (filling), a worker (compressing), the writer (writing) — handed over
    // through `state`, `queue` and `inOrder` under `cond`, which guards every
    // other field.

    enum State {
        case free, filling, queued, compressing
        case done(compressedSize: Int)
        case failed(String)

        var isFinished: Bool {
            switch self {
            case .done, .failed: true
            default: false
            }
        }
    }

    final class Slot {
        let input: UnsafeMutableRawBufferPointer
        let output: UnsafeMutableRawBufferPointer
        var state = State.free
        var length = 0
        /// Index of the frame among the compressed ones (the header frame not counted).
        var frame = 0
        /// Stream offset of the frame's first byte (uncompressed, after the header region).
        var streamOffset: UInt64 = 0

        init(frameSize: Int) {
            input = .allocate(byteCount: frameSize, alignment: 4096)
            output = .allocate(byteCount: ZSTD_compressBound(frameSize), alignment: 4096)
        }

        deinit {
            input.deallocate()
            output.deallocate()
        }
    }

    let file: any OutputSink
    let slots: [Slot]
    /// One per worker; or the caller's one without workers.
    let contexts: [OpaquePointer]
    let cond = NSCondition()
    /// Frames ended and not yet written, in stream order (slot indices).
    private var inOrder: [Int] = []
    /// Frames waiting for a worker (slot indices, oldest first).
    private var queue: [Int] = []
    private var stopping = false
    private var running = 0
    private var failure: ArchiveError?
    /// File offset past the last frame written.
    private var written: UInt64
    var beforeFrame: (@Sendable (Int) -> String?)?

    init(file: any OutputSink, startOffset: UInt64, level: Int32, contexts count: Int, slots slotCount: Int, frameSize: Int) throws(ArchiveError) {
        self.file = file
        written = startOffset
        // Every context is made before a thread starts, so a bad level fails here.
        var made: [OpaquePointer] = []
        do throws(ArchiveError) {
            for _ in 0..<count { made.append(try Self.makeContext(level: level, path: file.path)) }
        } catch {
            made.forEach { ZSTD_freeCCtx($0) }
            throw error
        }
        contexts = made
        slots = (0..<slotCount).map { _ in Slot(frameSize: frameSize) }
    }

    deinit { contexts.forEach { ZSTD_freeCCtx($0) } }

    private static func makeContext(level: Int32, path: String) throws(ArchiveError) -> OpaquePointer {
        guard let cctx = ZSTD_createCCtx() else {
            throw ArchiveError(.compression, path: path, "ZSTD_createCCtx failed")
        }
        for (p, v, what) in [(ZSTD_c_compressionLevel, level, "compression level \(level)"), (ZSTD_c_checksumFlag, 1, "checksum flag")] {
            let r = ZSTD_CCtx_setParameter(cctx, p, v)
            if ZSTD_isError(r) != 0 {
                ZSTD_freeCCtx(cctx)
                throw ArchiveError(.compression, path: path, "zstd: \(what): \(String(cString: ZSTD_getErrorName(r)))")
            }
        }
        return cctx
    }

    func lock<T>(_ body: () -> T) -> T {
        cond.lock()
        defer { cond.unlock() }
        return body()
    }

    var fileOffset: UInt64 { lock { written } }

    /// Starts a thread per context and the writer.
    func start(workers: Int, namePrefix: String) {
        lock { running = workers + 1 }
        for k in 0...workers {
            let name = k < workers ? "\(namePrefix)\(k)" : "\(namePrefix)write"
            let t = Thread { [self] in
                Self.nameThread(name)
                if k < workers { work(k) } else { writeLoop() }
            }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Stops the threads, waiting for a frame being compressed or written. Idempotent.
    func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while running > 0 { cond.wait() }
        cond.unlock()
    }

    /// Names the calling thread for perf and /proc (Foundation's `Thread.name`
    /// does not reach the kernel on Linux, and `pthread_setname_np` is not
    /// imported); best effort.
    private static func nameThread(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        guard fd >= 0 else { return }
        _ = name.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    // MARK: the threads

    private func work(_ worker: Int) {
        let cctx = contexts[worker]
        cond.lock()
        while true {
            while queue.isEmpty && !stopping { cond.wait() }
            if stopping { break }
            let i = queue.removeFirst()
            slots[i].state = .compressing
            let hook = beforeFrame
            cond.unlock()
            let result = Self.compress(slots[i], cctx, hook)
            cond.lock()
            slots[i].state = result
            cond.broadcast()
        }
        running -= 1
        cond.broadcast()
        cond.unlock()
    }

    private static func compress(_ slot: Slot, _ cctx: OpaquePointer, _ hook: (@Sendable (Int) -> String?)?) -> State {
        if let message = hook?(slot.frame) { return .failed(message) }
        let r = ZSTD_compress2(cctx, slot.output.baseAddress, slot.output.count, slot.input.baseAddress, slot.length)
        if ZSTD_isError(r) != 0 { return .failed(String(cString: ZSTD_getErrorName(r))) }
        return .done(compressedSize: r)
    }

    /// The writer thread: writes finished frames in stream order as soon as
    /// they are, so neither the caller nor a worker waits on the device.
    private func writeLoop() {
        cond.lock()
        while !stopping && failure == nil {
            guard let head = inOrder.first, slots[head].state.isFinished else {
                cond.wait()
                continue
            }
            let slot = slots[head]
            let state = slot.state
            let offset = written
            cond.unlock()
            let result = Self.write(slot, state, to: file, at: offset)
            cond.lock()
            switch result {
            case .success(let size):
                written += UInt64(size)
                inOrder.removeFirst()
                slot.state = .free
            case .failure(let e):
                failure = e
            }
            cond.broadcast()
        }
        running -= 1
        cond.broadcast()
        cond.unlock()
    }

    /// Writes a finished frame at `offset`: its compressed size, or the frame's or the sink's error.
    private static func write(_ slot: Slot, _ state: State, to file: any OutputSink, at offset: UInt64) -> Result<Int, ArchiveError> {
        switch state {
        case .done(let size):
            do throws(ArchiveError) {
                try writeFile(file, UnsafeRawBufferPointer(rebasing: slot.output[0..<size]), at: offset)
                return .success(size)
            } catch {
                return .failure(error)
            }
        case .failed(let message):
            return .failure(ArchiveError(.compression, path: file.path, offset: slot.streamOffset,
                                         "zstd: frame \(slot.frame) (stream offset \(slot.streamOffset)): \(message)"))
        default:
            preconditionFailure("writing a frame that is not finished")
        }
    }

    // MARK: the caller's side

    func checkFailure() throws(ArchiveError) {
        if let f = lock({ failure }) { throw f }
    }

    /// A free slot, marked filling; waits while none is.
    func takeFreeSlot() throws(ArchiveError) -> Int {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let failure { throw failure }
            if let free = slots.firstIndex(where: { if case .free = $0.state { true } else { false } }) {
                slots[free].state = .filling
                return free
            }
            cond.wait()
        }
    }

    /// Queues an ended frame for the workers.
    func enqueue(_ index: Int) {
        cond.lock()
        slots[index].state = .queued
        inOrder.append(index)
        queue.append(index)
        cond.broadcast()
        cond.unlock()
    }

    /// Without workers: compresses and writes the frame on the caller's thread.
    func compressAndWrite(_ index: Int) throws(ArchiveError) {
        let slot = slots[index]
        let state = Self.compress(slot, contexts[0], lock { beforeFrame })
        switch Self.write(slot, state, to: file, at: fileOffset) {
        case .success(let size):
            lock {
                written += UInt64(size)
                slot.state = .free
            }
        case .failure(let e):
            lock { failure = e }
            throw e
        }
    }

    /// Waits until every ended frame is written; the file offset past the last.
    func waitForAll() throws(ArchiveError) -> UInt64 {
        cond.lock()
        defer { cond.unlock() }
        while failure == nil && !inOrder.isEmpty { cond.wait() }
        if let failure { throw failure }
        return written
    }
}
