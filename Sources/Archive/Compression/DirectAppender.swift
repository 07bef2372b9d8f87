import Dispatch
import Foundation
import SnapdumpSystem

/// Where a compressing output puts its bytes: positional writes at offsets
/// that only grow.
protocol OutputSink: AnyObject {
    var path: String { get }
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws
}

extension File: OutputSink {}

/// The archive's stream written past the page cache (O_DIRECT), in aligned
/// blocks of `blockSize`, by a background queue while the next block fills.
///
/// Why (BENCHMARKS.md, "Issue 15"): copying the archive into the page cache
/// was the largest CPU cost of an uncompressed backup (the kernel's
/// `copy_folio_from_iter_atomic`: 2.6 s of 3.3 s for `cp` of a 2 GiB disk) and
/// left gigabytes of dirty pages for the final fsync and for the guests'
/// I/O to compete with; nothing reads a fresh archive soon. With O_DIRECT the
/// device reads our buffer itself.
///
/// The bytes before `start` (the header region, written by the caller through
/// `file`) are passed as `prefix` so the first block starts aligned. The
/// unaligned tail goes through `file` in `finish`, whose fsync then covers it
/// all. Where the filesystem has no O_DIRECT (tmpfs, FUSE) — at open or at the
/// first write — every byte goes through `file` instead, as before (the
/// fallback is `DirectFile`'s, shared with restore's writes).
final class DirectAppender: OutputSink, @unchecked Sendable {
    // @unchecked: `buffers` are handed between the caller and `io` one at a time
    // (the semaphore orders them); `failure` is guarded by `lock`.
    static let alignment = 4096
    static let blockSize = 4 << 20

    let path: String
    private let file: File
    private let direct: DirectFile
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var current = 0
    private var filled = 0
    /// File offset of the current buffer's first byte (aligned).
    private var blockOffset: UInt64
    private let io = DispatchQueue(label: "snapdump.archive-write")
    /// Free buffers other than the one being filled.
    private let free: DispatchSemaphore
    private let lock = NSLock()
    private var failure: (any Error)?
    private var finished = false

    /// `prefix` holds the file's bytes from 0 to `start` (already written through `file`).
    init(file: File, start: UInt64, prefix: UnsafeRawBufferPointer) {
        precondition(prefix.count == Int(start))
        self.file = file
        path = file.path
        direct = DirectFile(file: file)
        buffers = (0..<2).map { _ in .allocate(byteCount: Self.blockSize, alignment: Self.alignment) }
        free = DispatchSemaphore(value: buffers.count - 1)
        blockOffset = start / UInt64(Self.alignment) * UInt64(Self.alignment)
        let lead = Int(start - blockOffset)
        if lead > 0 {
            buffers[0].copyMemory(from: UnsafeRawBufferPointer(rebasing: prefix[(prefix.count - lead)...]))
        }
        filled = lead
    }

    deinit {
        io.sync {}  // no write still reads a buffer
        buffers.forEach { $0.deallocate() }
    }

    /// Whether writes still bypass the page cache (false after a fallback).
    var isDirect: Bool { direct.isDirect }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        precondition(!finished && offset == blockOffset + UInt64(filled), "DirectAppender: writes must be in order")
        if let failure = takeFailure() { throw failure }
        guard isDirect else {
            try flushBuffered()
            try file.write(bytes, at: offset)
            blockOffset = offset + UInt64(bytes.count)
            return
        }
        var done = 0
        while done < bytes.count {
            let n = min(Self.blockSize - filled, bytes.count - done)
            (buffers[current].baseAddress! + filled).copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            filled += n
            done += n
            if filled == Self.blockSize { try submit() }
        }
    }

    /// Hands the full current buffer to `io` and waits for a free one.
    private func submit() throws {
        let index = current, offset = blockOffset
        io.async { [self] in
            defer { free.signal() }
            let buffer = UnsafeRawBufferPointer(buffers[index])
            if takeFailure() != nil { return }
            do {
                // Aligned: direct, or buffered where the filesystem refused it.
                try direct.write(buffer, at: offset)
            } catch {
                lock.lock(); failure = error; lock.unlock()
            }
        }
        free.wait()
        current = (current + 1) % buffers.count
        blockOffset += UInt64(Self.blockSize)
        filled = 0
        if let failure = takeFailure() { throw failure }
    }

    /// Waits for the queued writes, then writes the partial buffer through `file`.
    private func flushBuffered() throws {
        io.sync {}
        if let failure = takeFailure() { throw failure }
        guard filled > 0 else { return }
        try file.write(UnsafeRawBufferPointer(rebasing: buffers[current][0..<filled]), at: blockOffset)
        blockOffset += UInt64(filled)
        filled = 0
    }

    private func takeFailure() -> (any Error)? {
        lock.lock(); defer { lock.unlock() }
        return failure
    }

    /// Waits for the queued writes and drops the rest (the archive is being
    /// removed): after this no write touches `file`.
    func close() {
        io.sync {}
        finished = true
        try? direct.closeDirect()
    }

    /// Writes everything still buffered; the caller fsyncs `file` after this.
    func finish() throws {
        guard !finished else { return }
        try flushBuffered()
        finished = true
        try direct.closeDirect()
    }
}
