import Foundation

/// The chunks of a volume that may differ between its base snapshot and a
/// newer snapshot, and within each the byte ranges that may differ, as the
/// storage itself tells it (incremental-forever backups into a repository
/// read only these ranges and take the rest of a chunk from the previous backup).
///
/// A superset is correct (an unchanged range read again costs time only); a
/// range missing here whose content differs would be data loss, so every
/// implementation errs towards including it. A storage that cannot say which
/// part of a chunk changed marks the whole chunk.
public struct ChangedChunks: Sendable, Equatable {
    /// Chunk size the indices count in (the repository's 4 MiB).
    public var chunkSize: UInt64
    /// Size of the volume at the base snapshot and at the new snapshot.
    public var baseSize: UInt64
    public var size: UInt64
    /// Indices of chunks that may differ (in the new snapshot's chunking).
    public private(set) var indices: IndexSet
    /// How the storage found them, for the log ("btrfs send", "FIEMAP", "zfs send", "rbd diff").
    public var method: String
    /// Per changed chunk: sorted, disjoint ranges of the volume (not crossing the
    /// chunk), `.data` where new content must be read, `.zero` where the storage
    /// says the new snapshot reads as zeros (freed, punched, unmapped).
    private var byChunk: [Int: [AllocationRange]] = [:]
    /// The changed ranges' content, when the storage's report carried it (zfs-fuse's `zfs send`
    /// stream): a reader of the new snapshot serves them from it (`StoragePlugin.openBlockSource(_:snapshot:changes:)`).
    public var data: ChangedData?

    public var chunkCount: Int { Int((size + chunkSize - 1) / chunkSize) }

    public init(chunkSize: UInt64, baseSize: UInt64, size: UInt64, method: String) {
        precondition(chunkSize > 0)
        self.chunkSize = chunkSize
        self.baseSize = baseSize
        self.size = size
        self.method = method
        indices = IndexSet()
        if baseSize != size {
            // A grown or shrunk volume: the old last chunk and everything after it.
            let from = min(baseSize, size)
            insert(offset: from == 0 ? 0 : from - 1, length: UInt64.max)
        }
    }

    /// Marks the bytes `offset ..< offset+length` changed (clipped to the volume):
    /// `.data` to be read, or `.zero` when the storage says they read as zeros now.
    /// A later insert overrides an earlier one where they overlap, as the
    /// storage's own records apply in order (a free, then a write into it).
    public mutating func insert(offset: UInt64, length: UInt64, kind: AllocationKind = .data) {
        guard length > 0, offset < size else { return }
        let end = length > size - offset ? size : offset + length
        let first = Int(offset / chunkSize), last = Int((end - 1) / chunkSize)
        indices.insert(integersIn: first...last)
        for c in first...last {
            let lo = max(offset, UInt64(c) * chunkSize), hi = min(end, UInt64(c + 1) * chunkSize)
            byChunk[c] = Self.overlay(byChunk[c] ?? [], AllocationRange(offset: lo, length: hi - lo, kind: kind))
        }
    }

    /// Marks every chunk changed: the base and the new snapshot have nothing in common that the storage can tell.
    public mutating func insertAll() {
        insert(offset: 0, length: size)
    }

    /// The changed ranges inside chunk `index` (empty: unchanged), sorted and disjoint.
    public func ranges(ofChunk index: Int) -> [AllocationRange] {
        byChunk[index] ?? []
    }

    /// Bytes the changed ranges hold, `.data` and `.zero` (for the log: what the storage reported).
    public var changedBytes: (data: UInt64, zero: UInt64) {
        var d: UInt64 = 0, z: UInt64 = 0
        for ranges in byChunk.values {
            for r in ranges { if r.kind == .data { d += r.length } else { z += r.length } }
        }
        return (d, z)
    }

    /// `ranges` with `new` laid over it; adjacent ranges of one kind merged.
    static func overlay(_ ranges: [AllocationRange], _ new: AllocationRange) -> [AllocationRange] {
        RangeOverlay.apply(ranges, new)
    }
}

/// What a storage can say about a volume's changes since its base snapshot.
public enum ChangeTracking: Sendable, Equatable {
    /// These chunks (and only these) may differ.
    case changed(ChangedChunks)
    /// The storage cannot tell: read everything. The reason goes into the log.
    case unknown(reason: String)

    public var changedChunks: ChangedChunks? {
        if case .changed(let c) = self { return c }
        return nil
    }

    public var reason: String? {
        if case .unknown(let r) = self { return r }
        return nil
    }
}
