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

    /// Closes the direct descriptor (not `file`); later writes are buffered.
    public func closeDirect() throws {
        let d = lock.withLock {
            defer { direct = nil }
            return direct
        }
        try d?.close()
    }
}
