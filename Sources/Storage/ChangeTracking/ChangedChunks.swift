import Foundation

/// The chunks of a volume that may differ between its base snapshot and a
/// newer snapshot, as the storage itself tells it (incremental-forever
/// backups into a repository read only these).
///
/// A superset is correct (an unchanged chunk read again costs time only); a
/// chunk missing from `indices` whose content differs would be data loss, so
/// every implementation errs towards including a chunk.
public struct ChangedChunks: Sendable, Equatable {
    /// Chunk size the indices count in (the repository's 4 MiB).
    public var chunkSize: UInt64
    /// Size of the volume at the base snapshot and at the new snapshot.
    public var baseSize: UInt64
    public var size: UInt64
    /// Indices of chunks that may differ (in the new snapshot's chunking).
    public var indices: IndexSet
    /// How the storage found them, for the log ("btrfs send", "FIEMAP", "zfs send", "rbd diff").
    public var method: String

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

    /// Marks the bytes `offset ..< offset+length` changed (clipped to the volume).
    public mutating func insert(offset: UInt64, length: UInt64) {
        guard length > 0, offset < size else { return }
        let end = length > size - offset ? size : offset + length
        let first = Int(offset / chunkSize), last = Int((end - 1) / chunkSize)
        indices.insert(integersIn: first...last)
    }

    /// Marks every chunk changed: the base and the new snapshot have nothing in common that the storage can tell.
    public mutating func insertAll() {
        insert(offset: 0, length: size)
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
