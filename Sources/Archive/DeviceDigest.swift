import Synchronization

/// snapdump's content digest of a device (DESIGN.md, "Archives"): SHA-256 of
/// each 4 MiB chunk (the last may be short), then SHA-256 over the chunk
/// digests in order. An all-zero full chunk has a known digest and is never
/// hashed.
///
/// Chunk digests may be computed on any threads, in any order, with
/// `DeviceDigest.digest(of:)`, and recorded with `record(chunk:digest:)`.
public final class DeviceDigest: Sendable {
    public static let chunkSize = 4 * 1024 * 1024
    public static let clustersPerChunk = chunkSize / VMAFormat.clusterSize

    /// SHA-256 of 4 MiB of zeros.
    public static let zeroChunkDigest = SHA256Digest(hex: "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8")!

    public let deviceSize: UInt64
    public let chunkCount: Int

    private struct State {
        var digests: [SHA256Digest]
        var present: [Bool]
        var missing: Int
    }
    private let state: Mutex<State>

    public init(deviceSize: UInt64) {
        self.deviceSize = deviceSize
        chunkCount = Int((deviceSize + UInt64(Self.chunkSize) - 1) / UInt64(Self.chunkSize))
        state = Mutex(State(digests: Array(repeating: SHA256Digest(), count: chunkCount),
                            present: Array(repeating: false, count: chunkCount), missing: chunkCount))
    }

    /// Byte length of chunk `index` (the last one may be short).
    public func chunkLength(_ index: Int) -> Int {
        let start = UInt64(index) * UInt64(Self.chunkSize)
        return Int(min(UInt64(Self.chunkSize), deviceSize - start))
    }

    /// The digest of one chunk's bytes, using the zero shortcut. Thread-safe.
    public static func digest(of chunk: UnsafeRawBufferPointer) -> SHA256Digest {
        if chunk.count == chunkSize && ZeroCheck.isZero(chunk) { return zeroChunkDigest }
        return SHA256.digest(chunk)
    }

    /// Records the digest of chunk `index`; any order, any thread. Recording
    /// a chunk twice is a programming error.
    public func record(chunk index: Int, digest: SHA256Digest) {
        precondition(index >= 0 && index < chunkCount, "chunk \(index) out of range 0..<\(chunkCount)")
        state.withLock { s in
            precondition(!s.present[index], "chunk \(index) recorded twice")
            s.present[index] = true
            s.digests[index] = digest
            s.missing -= 1
        }
    }

    /// Chunks not recorded yet.
    public var missingChunks: Int { state.withLock { $0.missing } }

    /// SHA-256 over the chunk digests in order, or nil while chunks are missing.
    public func finalDigest() -> SHA256Digest? {
        state.withLock { s in
            guard s.missing == 0 else { return nil }
            return s.digests.withUnsafeBytes { SHA256.digest($0) }
        }
    }

    /// The whole computation over a buffer holding a device's content (tests, small devices).
    public static func digest(ofDevice content: UnsafeRawBufferPointer) -> SHA256Digest {
        let d = DeviceDigest(deviceSize: UInt64(content.count))
        for i in 0..<d.chunkCount {
            let start = i * chunkSize
            d.record(chunk: i, digest: digest(of: UnsafeRawBufferPointer(rebasing: content[start..<start + d.chunkLength(i)])))
        }
        return d.finalDigest()!
    }
}

/// Builds a device's digest from its 64 KiB clusters as a VMA stream
/// delivers them (reader, restore). Clusters of one chunk are assembled in a
/// 4 MiB buffer and the chunk is hashed when complete. Clusters normally come
/// in order; out-of-order clusters are fine as long as at most
/// `maxPendingChunks` chunks are incomplete at a time. Buffers are pooled.
/// One thread: not Sendable.
public final class DeviceDigestAccumulator {
    public let digest: DeviceDigest
    public let maxPendingChunks: Int

    private struct Pending {
        var buffer: UnsafeMutableRawBufferPointer
        var received: Int
        var nonZero: Bool
    }
    private var pending: [Int: Pending] = [:]
    private var pool: [UnsafeMutableRawBufferPointer] = []
    private let clusterCount: UInt64

    public init(deviceSize: UInt64, maxPendingChunks: Int = 8) {
        digest = DeviceDigest(deviceSize: deviceSize)
        self.maxPendingChunks = maxPendingChunks
        clusterCount = VMAFormat.clusterCount(deviceSize: deviceSize)
    }

    deinit {
        for p in pending.values { p.buffer.deallocate() }
        for b in pool { b.deallocate() }
    }

    public struct TooFarOutOfOrder: Error, CustomStringConvertible {
        public var limit: Int
        public var description: String {
            "clusters too far out of order to compute the digest (more than \(limit) chunks of 4 MiB incomplete)"
        }
    }

    private func clustersIn(chunk: Int) -> Int {
        let first = UInt64(chunk * DeviceDigest.clustersPerChunk)
        return Int(min(UInt64(DeviceDigest.clustersPerChunk), clusterCount - first))
    }

    /// Adds cluster `cluster` given as a VMA mask and its stored blocks
    /// (popcount(mask) × 4096 bytes, in bit order). Each cluster once.
    public func add(cluster: UInt32, mask: UInt16, blocks: UnsafeRawBufferPointer) throws {
        let chunk = Int(cluster) / DeviceDigest.clustersPerChunk
        precondition(UInt64(cluster) < clusterCount, "cluster \(cluster) beyond the device")
        var p: Pending
        if let existing = pending[chunk] {
            p = existing
        } else {
            guard pending.count < maxPendingChunks else { throw TooFarOutOfOrder(limit: maxPendingChunks) }
            p = Pending(buffer: pool.popLast() ?? .allocate(byteCount: DeviceDigest.chunkSize, alignment: 64),
                        received: 0, nonZero: false)
        }
        let base = (Int(cluster) % DeviceDigest.clustersPerChunk) * VMAFormat.clusterSize
        let dst = p.buffer.baseAddress! + base
        if mask == 0 {
            dst.initializeMemory(as: UInt8.self, repeating: 0, count: VMAFormat.clusterSize)
        } else {
            var src = 0
            for j in 0..<VMAFormat.blocksPerCluster {
                let d = dst + j * VMAFormat.blockSize
                if mask & (1 << j) != 0 {
                    d.copyMemory(from: blocks.baseAddress! + src, byteCount: VMAFormat.blockSize)
                    src += VMAFormat.blockSize
                } else {
                    d.initializeMemory(as: UInt8.self, repeating: 0, count: VMAFormat.blockSize)
                }
            }
            p.nonZero = true
        }
        p.received += 1
        if p.received == clustersIn(chunk: chunk) {
            let len = digest.chunkLength(chunk)
            let d: SHA256Digest = (!p.nonZero && len == DeviceDigest.chunkSize)
                ? DeviceDigest.zeroChunkDigest
                : DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: p.buffer[0..<len]))
            digest.record(chunk: chunk, digest: d)
            pending[chunk] = nil
            pool.append(p.buffer)
        } else {
            pending[chunk] = p
        }
    }

    /// Adds a whole 64 KiB cluster (bytes past the device end are ignored).
    public func add(cluster: UInt32, data: UnsafeRawBufferPointer) throws {
        precondition(data.count >= VMAFormat.clusterSize)
        try add(cluster: cluster, mask: 0xFFFF, blocks: data)
    }

    /// The device digest, or nil when clusters are missing.
    public func finalDigest() -> SHA256Digest? { digest.finalDigest() }
}
