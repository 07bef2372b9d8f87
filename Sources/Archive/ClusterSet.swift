/// Which clusters of a device were seen. The header's claimed size does not
/// decide the memory used: the set holds only the 64-bit words that have a
/// bit set (clusters in order touch one word per 64 clusters, kept in
/// `current` until the next word starts), so it grows with the clusters
/// actually delivered — at most one word per 8-byte blockinfo entry of the
/// stream. A reference type so that checking and setting a bit never copies the set.
final class ClusterSet {
    let count: UInt64
    private var words: [UInt32: UInt64] = [:]
    /// The word written last, not yet stored in `words`.
    private var currentIndex: UInt32 = 0
    private var current: UInt64 = 0
    private(set) var inserted: UInt64 = 0

    /// `count` ≤ 2^32 (cluster numbers are u32).
    init(count: UInt64) {
        precondition(count <= UInt64(UInt32.max) + 1, "\(count) clusters: more than a u32 cluster number can address")
        self.count = count
    }

    private func word(_ index: UInt32) -> UInt64 { index == currentIndex ? current : words[index, default: 0] }

    func contains(_ cluster: UInt32) -> Bool { word(cluster / 64) & (1 << (cluster % 64)) != 0 }

    /// Adds `cluster` (< count); false if it was already there.
    func insert(_ cluster: UInt32) -> Bool {
        let index = cluster / 64, bit = UInt64(1) << (cluster % 64)
        if index != currentIndex {
            if current != 0 { words[currentIndex] = current }
            currentIndex = index
            current = words.removeValue(forKey: index) ?? 0
        }
        if current & bit != 0 { return false }
        current |= bit
        inserted += 1
        return true
    }

    /// The lowest cluster not inserted, nil when all are.
    func firstMissing() -> UInt64? {
        guard inserted < count else { return nil }
        var all = words
        if current != 0 { all[currentIndex] = current }
        var expected: UInt64 = 0
        for index in all.keys.sorted() {
            // A word with no bit set is never stored: a gap in the indexes is a missing cluster.
            if UInt64(index) != expected { break }
            let w = all[index]!
            if w != ~0 { return min(UInt64(index) * 64 + UInt64((~w).trailingZeroBitCount), count) }
            expected += 1
        }
        return expected * 64
    }
}
