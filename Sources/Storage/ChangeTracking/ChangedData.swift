/// The content of a volume's changed ranges at the new snapshot, as the
/// storage's own change report carried it (the WRITE payloads and FREE
/// records of a `zfs send -i` stream): the changed ranges can be served from
/// memory instead of reading the snapshot (`ChangedDataSource`).
///
/// Segments are sorted and disjoint; a later insert overrides an earlier one
/// where they overlap, as the stream's records apply in order. A segment
/// without bytes reads as zeros. Offsets outside every segment are not known here.
public struct ChangedData: Sendable, Equatable {
    public struct Segment: Sendable, Equatable, OverlaidRange {
        public var offset: UInt64
        public var length: UInt64
        /// nil: zeros (freed).
        public var bytes: ArraySlice<UInt8>?

        var end: UInt64 { offset + length }

        func slice(_ from: UInt64, _ to: UInt64) -> Segment {
            let bytes = self.bytes.map { b in b[(b.startIndex + Int(from - offset))..<(b.startIndex + Int(to - offset))] }
            return Segment(offset: from, length: to - from, bytes: bytes)
        }

        /// Payloads stay apart (joining would copy them).
        func joined(_ next: Segment) -> Segment? { nil }
    }

    /// What the data belongs to in the storage (zfs: the file's object number).
    public let object: UInt64
    /// The volume's size at the new snapshot; segments are clipped to it.
    public let size: UInt64
    public private(set) var segments: [Segment] = []

    public init(object: UInt64, size: UInt64) {
        self.object = object
        self.size = size
    }

    /// `length` bytes at `offset` (clipped to `size`): `bytes` (exactly `length` of them), or zeros when nil.
    public mutating func insert(offset: UInt64, length: UInt64, bytes: [UInt8]?) {
        guard length > 0, offset < size else { return }
        precondition(bytes == nil || UInt64(bytes!.count) == length)
        let end = length > size - offset ? size : offset + length
        let new = Segment(offset: offset, length: end - offset, bytes: bytes.map { $0[0..<Int(end - offset)] })
        // Appending (the usual, ascending case) needs no search.
        let lo = segments.last.map { $0.end > offset } == true ? firstEnding(after: offset) : segments.count
        var hi = lo
        while hi < segments.count && segments[hi].offset < end { hi += 1 }
        // Only the segments the new one overlaps are laid over again.
        segments.replaceSubrange(lo..<hi, with: RangeOverlay.apply(segments[lo..<hi], new))
    }

    /// The segment holding `offset`, else where the next segment starts (nil: none after it).
    public func lookup(_ offset: UInt64) -> (segment: Segment?, next: UInt64?) {
        let lo = firstEnding(after: offset)
        guard lo < segments.count else { return (nil, nil) }
        let s = segments[lo]
        return s.offset <= offset ? (s, nil) : (nil, s.offset)
    }

    /// The index of the first segment that ends after `offset` (`segments.count`: none).
    private func firstEnding(after offset: UInt64) -> Int {
        var lo = 0, hi = segments.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if segments[mid].end <= offset { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Bytes held in memory.
    public var heldBytes: UInt64 { segments.reduce(0) { $0 + ($1.bytes == nil ? 0 : $1.length) } }
}
