/// Which clusters of a device were seen: one bit per cluster, a reference
/// type so that checking and setting a bit never copies the set.
final class ClusterSet {
    let count: UInt64
    private let words: UnsafeMutableBufferPointer<UInt64>
    private(set) var inserted: UInt64 = 0

    init(count: UInt64) {
        self.count = count
        words = .allocate(capacity: Int((count + 63) / 64))
        words.initialize(repeating: 0)
    }

    deinit { words.deallocate() }

    func contains(_ cluster: UInt32) -> Bool {
        words[Int(cluster / 64)] & (1 << (cluster % 64)) != 0
    }

    /// Adds `cluster` (< count); false if it was already there.
    func insert(_ cluster: UInt32) -> Bool {
        let w = Int(cluster / 64), bit = UInt64(1) << (cluster % 64)
        if words[w] & bit != 0 { return false }
        words[w] |= bit
        inserted += 1
        return true
    }

    /// The lowest cluster not inserted, nil when all are.
    func firstMissing() -> UInt64? {
        guard inserted < count else { return nil }
        for (i, w) in words.enumerated() where w != ~0 {
            let c = UInt64(i * 64 + (~w).trailingZeroBitCount)
            if c < count { return c }
        }
        return nil
    }
}
