/// A byte range that carries something (a kind, bytes) and can be cut: what
/// `RangeOverlay` lays one over another.
protocol OverlaidRange {
    var offset: UInt64 { get }
    var length: UInt64 { get }
    /// The part from `from` to `to` (both inside the range).
    func slice(_ from: UInt64, _ to: UInt64) -> Self
    /// `self` followed by `next` (starting where `self` ends) as one range, where they can be one.
    func joined(_ next: Self) -> Self?
}

/// A storage's change records applied in order: a later range replaces what
/// earlier ones said of the bytes it covers (a free, then a write into it).
/// `ChangedChunks` keeps kinds per chunk this way, `ChangedData` the bytes.
enum RangeOverlay {
    /// `ranges` (sorted, disjoint) with `new` laid over it; neighbours `joined` where they can be.
    static func apply<R: OverlaidRange>(_ ranges: some Collection<R>, _ new: R) -> [R] {
        let newEnd = new.offset + new.length
        var out: [R] = []
        out.reserveCapacity(ranges.count + 2)
        var placed = false
        func append(_ r: R) {
            if let l = out.last, l.offset + l.length == r.offset, let j = l.joined(r) {
                out[out.count - 1] = j
            } else {
                out.append(r)
            }
        }
        for r in ranges {
            let end = r.offset + r.length
            if end <= new.offset || r.offset >= newEnd {
                if !placed && r.offset >= newEnd { append(new); placed = true }
                append(r)
                continue
            }
            // Overlapping: keep what lies before and after the new range.
            if r.offset < new.offset { append(r.slice(r.offset, new.offset)) }
            if !placed { append(new); placed = true }
            if end > newEnd { append(r.slice(newEnd, end)) }
        }
        if !placed { append(new) }
        return out
    }
}

extension AllocationRange: OverlaidRange {
    func slice(_ from: UInt64, _ to: UInt64) -> AllocationRange { AllocationRange(offset: from, length: to - from, kind: kind) }

    func joined(_ next: AllocationRange) -> AllocationRange? {
        next.kind == kind ? AllocationRange(offset: offset, length: length + next.length, kind: kind) : nil
    }
}
