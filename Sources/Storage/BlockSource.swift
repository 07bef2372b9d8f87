import SnapdumpSystem

/// What a byte range of a volume holds, as far as the storage knows without reading.
public enum AllocationKind: Sendable, Equatable {
    /// Allocated data: must be read.
    case data
    /// Known to read as zeros (allocated or not): need not be read.
    case zero
}

public struct AllocationRange: Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public var kind: AllocationKind

    public init(offset: UInt64, length: UInt64, kind: AllocationKind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }
}

/// Reads the raw content of a volume or a snapshot. The backup engine, export
/// and restore verification all read through this one protocol.
///
/// `read` fills the caller's buffer (reused by the caller: no allocation per
/// read); bytes past `size` are not read. `allocation` maps a range to data and
/// zero ranges — SEEK_DATA/SEEK_HOLE for files, NBD block status for qcow2 —
/// so holes are never read.
public protocol BlockSource: AnyObject, Sendable {
    var size: UInt64 { get }
    /// What the source is, for messages: "local:100/vm-100-disk-0.raw@snap1".
    var name: String { get }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange]
    /// A hint that `offset..<offset+length` will be read soon: a source that can
    /// fetch in the background starts to. Never fails; the default does nothing.
    func prefetch(offset: UInt64, length: UInt64)
    func close() throws
}

extension BlockSource {
    public func prefetch(offset: UInt64, length: UInt64) {}

    /// The allocation of the whole source.
    public func allocationMap() throws -> [AllocationRange] {
        try allocation(offset: 0, length: size)
    }
}

/// A raw file (or block device) read with pread; holes found with SEEK_DATA/SEEK_HOLE.
public final class FileBlockSource: BlockSource, @unchecked Sendable {
    // @unchecked: `file` is immutable and pread is thread-safe; `onClose` runs once from close().
    public let size: UInt64
    public let name: String
    private let file: File
    private var onClose: (() throws -> Void)?
    /// Block devices (LVs, zvols) take no SEEK_DATA (EINVAL): all of one is data.
    private let isBlockDevice: Bool
    /// Drops what each read brought into the page cache (snapshots: see init).
    public let dropsBehind: Bool

    /// `dropBehind`: for a storage snapshot, which is read once and then deleted or
    /// kept only as a change-tracking base. Its pages would never be read again, and
    /// deleting the snapshot frees them in the deleting call: after a full read of
    /// 2 GiB, `BTRFS_IOC_SNAP_DESTROY` spent 0.30 s truncating 512 k pages, serially,
    /// at the end of the next backup (BENCHMARKS.md, issue 11, session 8). Dropped
    /// right after each read, the same work runs beside the hashing, and a backup
    /// no longer pushes the host's own cache out for data it never reads again.
    public init(path: String, name: String, dropBehind: Bool = false, onClose: (() throws -> Void)? = nil) throws {
        isBlockDevice = FileSystem.isBlockDevice(path)
        file = try File.openForReading(path)
        file.adviseSequential()
        size = try file.size()
        self.name = name
        dropsBehind = dropBehind
        self.onClose = onClose
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard offset < size else { return 0 }
        let want = Int(min(UInt64(buffer.count), size - offset))
        let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: offset)
        if dropsBehind, n > 0 { file.adviseDontNeed(offset: offset, length: UInt64(n)) }
        return n
    }

    /// The page cache reads the range ahead (posix_fadvise WILLNEED) — unless its
    /// first and last pages are cached already: then it most likely is, and asking
    /// again would only cost a walk over its pages (~15 % more system time when an
    /// export is served from the page cache).
    public func prefetch(offset: UInt64, length: UInt64) {
        guard offset < size, length > 0 else { return }
        let last = min(offset + length, size) - 1
        if file.isCached(at: offset) && file.isCached(at: last) { return }
        file.adviseWillNeed(offset: offset, length: length)
    }

    public func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        let end = min(size, offset + length)
        if isBlockDevice { return offset < end ? [AllocationRange(offset: offset, length: end - offset, kind: .data)] : [] }
        var ranges: [AllocationRange] = []
        var pos = offset
        while pos < end {
            guard let data = try file.nextData(from: pos), data < end else {
                ranges.append(AllocationRange(offset: pos, length: end - pos, kind: .zero))
                break
            }
            if data > pos { ranges.append(AllocationRange(offset: pos, length: data - pos, kind: .zero)) }
            let hole = min(try file.nextHole(from: data), end)
            ranges.append(AllocationRange(offset: data, length: hole - data, kind: .data))
            pos = hole
        }
        return ranges
    }

    public func close() throws {
        try file.close()
        let c = onClose
        onClose = nil
        try c?()
    }

    deinit { try? onClose?() }
}
