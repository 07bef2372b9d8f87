import Foundation
import Synchronization
import SnapdumpSystem

/// Writes the raw content of a volume: restore, and tests that play a guest.
/// Files and block devices are written with pwrite; RBD images through librbd.
public protocol VolumeWriter: AnyObject, Sendable {
    var name: String { get }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Everything written is on stable storage when this returns.
    func sync() throws
    func close() throws
}

/// A raw file or block device.
///
/// With `directWrites`, the aligned part of every write (offset, length and
/// buffer address on `directAlignment`) goes past the page cache through a
/// second, O_DIRECT descriptor of the same file; an unaligned head or tail of
/// a write goes through `file`. Why: a restore writes gigabytes nothing reads
/// soon, and copying them into the page cache was the largest CPU cost of a
/// write on these hosts (BENCHMARKS.md, "Issue 15"); it also left all of it
/// dirty for the final fsync. Where the filesystem has no direct I/O (tmpfs,
/// FUSE) — at open or at the first write — every byte goes through `file`.
/// `sync` (fsync of `file`) covers both descriptors: the data of direct
/// writes is on the device when they return, fsync writes the metadata.
public final class FileVolumeWriter: VolumeWriter, @unchecked Sendable {
    // @unchecked: `file` is immutable; pwrite and fsync are thread-safe; `direct` is a Mutex.
    public static let directAlignment = 4096

    public let name: String
    public let file: File
    private let direct: Mutex<File?>

    /// `flags` adds to O_WRONLY (O_DIRECT for a writer that plays a guest with cache=none).
    public init(path: String, name: String, flags: Int32 = 0) throws {
        file = try File.open(path, O_WRONLY | flags)
        self.name = name
        direct = Mutex(nil)
    }

    public init(file: File, name: String, directWrites: Bool = false) {
        self.file = file
        self.name = name
        direct = Mutex(directWrites ? try? file.reopenForDirectWriting() : nil)
    }

    /// Whether aligned writes still bypass the page cache (false when not
    /// asked for, or after the filesystem refused O_DIRECT).
    public var writesDirect: Bool { direct.withLock { $0 != nil } }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard let d = direct.withLock({ $0 }), buffer.count > 0 else { return try file.write(buffer, at: offset) }
        let a = UInt64(Self.directAlignment)
        let start = (offset + a - 1) / a * a, end = (offset + UInt64(buffer.count)) / a * a
        let head = Int(start - offset)
        guard end > start, (UInt(bitPattern: buffer.baseAddress!) + UInt(head)) % UInt(a) == 0 else {
            return try file.write(buffer, at: offset)
        }
        let middle = UnsafeRawBufferPointer(rebasing: buffer[head..<(head + Int(end - start))])
        if head > 0 { try file.write(UnsafeRawBufferPointer(rebasing: buffer[..<head]), at: offset) }
        do {
            try d.write(middle, at: start)
        } catch let e as SystemError where e.errno == EINVAL {
            // The filesystem took the open but not the write: buffered from here on
            // (the descriptor closes when no other thread's write still holds it).
            direct.withLock { $0 = nil }
            try file.write(middle, at: start)
        }
        if head + middle.count < buffer.count {
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[(head + middle.count)...]), at: end)
        }
    }

    public func sync() throws { try file.sync() }

    public func close() throws {
        direct.withLock { $0 = nil }
        try file.close()
    }
}
