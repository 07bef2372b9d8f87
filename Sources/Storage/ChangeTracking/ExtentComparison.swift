import Foundation
import SnapdumpSystem

/// Finds the changed ranges of a reflinked file by comparing the block maps
/// (FIEMAP) of two clones of it, the base clone kept alive since the last
/// backup and the new one (change-tracking.md, "XFS/btrfs reflink").
///
/// A byte is unchanged only when both clones map it to the same physical
/// address, or both have a hole there. Never trusts FIEMAP_EXTENT_SHARED:
/// once a clone exists every live extent is shared. Extents whose address
/// is not final or not the data's (delalloc, unknown, not aligned, inline,
/// tail, encrypted) always count as changed; encoded (compressed) extents
/// only compare equal when logical start, physical address and length are
/// all identical, since btrfs reports the compressed extent's start.
public enum ExtentComparison {
    static let untrusted: UInt32 = File.Extent.unknown | File.Extent.delalloc | File.Extent.notAligned
        | File.Extent.inline | File.Extent.tail | File.Extent.encrypted

    /// Marks in `result` every chunk where the two maps differ.
    public static func compare(base: [File.Extent], new: [File.Extent], into result: inout ChangedChunks) {
        let end = max(result.size, result.baseSize)
        var i = 0, j = 0
        var pos: UInt64 = 0
        while pos < end {
            while i < base.count && base[i].logical + base[i].length <= pos { i += 1 }
            while j < new.count && new[j].logical + new[j].length <= pos { j += 1 }
            let a = i < base.count && base[i].logical <= pos ? base[i] : nil
            let b = j < new.count && new[j].logical <= pos ? new[j] : nil
            // The piece [pos, next) lies inside one extent (or hole) of each map.
            var next = end
            if let a { next = min(next, a.logical + a.length) } else if i < base.count { next = min(next, base[i].logical) }
            if let b { next = min(next, b.logical + b.length) } else if j < new.count { next = min(next, new[j].logical) }
            if !same(a, b, at: pos) { result.insert(offset: pos, length: next - pos, kind: readsAsZeros(b) ? .zero : .data) }
            pos = next
        }
    }

    /// A hole, or an unwritten (preallocated) extent whose address is final: zeros without reading.
    static func readsAsZeros(_ e: File.Extent?) -> Bool {
        guard let e else { return true }
        return e.flags & File.Extent.unwritten != 0 && e.flags & untrusted == 0
    }

    static func same(_ a: File.Extent?, _ b: File.Extent?, at pos: UInt64) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case (let a?, let b?):
            if (a.flags | b.flags) & untrusted != 0 { return false }
            if (a.flags ^ b.flags) & File.Extent.unwritten != 0 { return false }
            if (a.flags | b.flags) & File.Extent.encoded != 0 {
                return a.logical == b.logical && a.physical == b.physical && a.length == b.length
                    && a.flags & File.Extent.encoded == b.flags & File.Extent.encoded
            }
            return a.physical &+ (pos - a.logical) == b.physical &+ (pos - b.logical)
        default:
            // A hole on one side and data on the other: the data may be zeros, but read it.
            return false
        }
    }

    /// The changes between two clones `basePath` and `newPath` of one file.
    public static func changes(basePath: String, newPath: String, chunkSize: UInt64) throws -> ChangedChunks {
        let baseFile = try File.openForReading(basePath), newFile = try File.openForReading(newPath)
        var result = ChangedChunks(chunkSize: chunkSize, baseSize: try baseFile.size(), size: try newFile.size(), method: "FIEMAP")
        compare(base: try baseFile.extents(), new: try newFile.extents(), into: &result)
        return result
    }
}
