#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Positional writes into a file past the page cache (O_DIRECT) wherever the
/// memory, the offset and the length allow it, through the ordinary
/// descriptor everywhere else.
///
/// Why: copying gigabytes into the page cache (the kernel's
/// `copy_folio_from_iter_atomic`) costs more CPU than anything else a restore
/// or an uncompressed backup does besides hashing, and leaves dirty pages for
/// the final fsync (BENCHMARKS.md, "Issue 15"). With O_DIRECT the device reads
/// the caller's buffer itself.
///
/// A write whose buffer and offset are `alignment`-aligned goes direct up to
/// its last whole block; its unaligned tail (the end of a device that is not
/// a multiple of 4 KiB) and every unaligned write go through `file`. Where
/// the filesystem has no direct I/O — refused at open (some FUSE
/// filesystems) or at the first write (EINVAL) — every byte goes through
/// `file` from then on. The caller fsyncs `file` at the end, which covers
/// both descriptors' writes. Thread-safe: writes from several threads to
/// disjoint ranges.
public final class DirectFile: @unchecked Sendable {
    // @unchecked: `file` is immutable; `direct` is guarded by `lock`.
    /// 4096 covers every device's logical block and memory alignment.
    public static let alignment = 4096

    /// The ordinary descriptor; owned by the caller.
    public let file: File
    private var direct: File?
    private var queue: AsyncWrites?
    /// io_setup refused: no AIO.
    private var noQueue = false
    private let lock = NSLock()

    /// `file` must be open for writing. `direct: false` writes everything through it.
    public init(file: File, direct: Bool = true) {
        self.file = file
        self.direct = direct ? try? file.reopenForDirectWriting() : nil
    }

    /// Whether aligned writes still bypass the page cache (false after a fallback).
    public var isDirect: Bool { lock.withLock { direct != nil } }

    /// Whether a write of `bytes` at `offset` can go direct (its whole blocks).
    public static func isAligned(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) -> Bool {
        guard let base = bytes.baseAddress else { return false }
        return Int(bitPattern: base) % alignment == 0 && offset % UInt64(alignment) == 0
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        let whole = bytes.count / Self.alignment * Self.alignment
        guard whole > 0, Self.isAligned(bytes, at: offset), let d = lock.withLock({ direct }) else {
            return try file.write(bytes, at: offset)
        }
        do {
            try d.write(UnsafeRawBufferPointer(rebasing: bytes[0..<whole]), at: offset)
        } catch let e as SystemError where e.errno == EINVAL {
            // The filesystem took the open but not the write: buffered from here on.
            lock.withLock {
                if direct === d { direct = nil }
            }
            try file.write(UnsafeRawBufferPointer(rebasing: bytes[0..<whole]), at: offset)
        }
        if whole < bytes.count {
            try file.write(UnsafeRawBufferPointer(rebasing: bytes[whole...]), at: offset + UInt64(whole))
        }
    }

    /// Writes `bytes` at `offset` and calls `done` once `bytes` may be reused,
    /// with the write's error if any: the whole blocks of an aligned write
    /// are sent asynchronously (`AsyncWrites`) and `done` runs on another
    /// thread when the device has them; everything else is written before
    /// `submit` returns, `done` included. Writes in flight together must not
    /// overlap.
    public func submit(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, done: @escaping @Sendable ((any Error)?) -> Void) {
        let whole = bytes.count / Self.alignment * Self.alignment
        guard whole > 0, Self.isAligned(bytes, at: offset), let (d, queue) = directQueue() else {
            do { try write(bytes, at: offset) } catch { return done(error) }
            return done(nil)
        }
        do {
            if whole < bytes.count {
                try file.write(UnsafeRawBufferPointer(rebasing: bytes[whole...]), at: offset + UInt64(whole))
            }
        } catch {
            return done(error)
        }
        let part = UnsafeRawBufferPointer(rebasing: bytes[0..<whole])
        // Sendable stand-ins for the buffer (the caller keeps it until `done`).
        let base = UInt(bitPattern: part.baseAddress!), count = part.count
        let sent = queue.submit(fd: d.fd, part, at: offset) { [self] result in
            let part = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: count)
            if result == Int64(count) { return done(nil) }
            // A short write, or one the filesystem refused (EINVAL: no direct
            // I/O after all): the rest the ordinary way.
            if result == -Int64(EINVAL) { lock.withLock { if direct === d { direct = nil } } }
            let from = result > 0 ? Int(result) : 0
            if result < 0 && result != -Int64(EINVAL) {
                return done(SystemError("write at offset \(offset) of", file.path, errno: Int32(-result)))
            }
            do { try file.write(UnsafeRawBufferPointer(rebasing: part[from...]), at: offset + UInt64(from)) } catch { return done(error) }
            done(nil)
        }
        guard sent else {
            do { try write(part, at: offset) } catch { return done(error) }
            return done(nil)
        }
    }

    /// The direct descriptor and the AIO queue, made on first use; nil when
    /// writes go through `file` (or the kernel has no AIO).
    private func directQueue() -> (File, AsyncWrites)? {
        lock.withLock {
            guard let d = direct else { return nil }
            if queue == nil && !noQueue {
                queue = AsyncWrites()
                noQueue = queue == nil
            }
            guard let queue else { return nil }
            return (d, queue)
        }
    }

    /// Closes the direct descriptor (not `file`) after the writes in flight;
    /// later writes are buffered.
    public func closeDirect() throws {
        let (d, q) = lock.withLock {
            defer { direct = nil; queue = nil }
            return (direct, queue)
        }
        q?.close()
        try d?.close()
    }

    deinit {
        queue?.close()
    }
}
