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

    /// Memory does not grow with the device size: the chunk digests that
    /// continue the recorded prefix go straight into the final hash; only
    /// those recorded ahead of a missing one wait, in `ahead`.
    private struct State {
        var hasher = EVPHasher.sha256()
        var next = 0
        var ahead: [Int: SHA256Digest] = [:]
        var final: SHA256Digest?
    }
    private let state: Mutex<State>

    public init(deviceSize: UInt64) {
        self.deviceSize = deviceSize
        let chunk = UInt64(Self.chunkSize)
        chunkCount = Int(deviceSize / chunk + (deviceSize % chunk == 0 ? 0 : 1))
        state = Mutex(State())
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
            precondition(index >= s.next && s.ahead[index] == nil, "chunk \(index) recorded twice")
            guard index == s.next else {
                s.ahead[index] = digest
                return
            }
            var d = digest
            while true {
                withUnsafeBytes(of: &d) { s.hasher.update($0) }
                s.next += 1
                guard let following = s.ahead.removeValue(forKey: s.next) else { break }
                d = following
            }
        }
    }

    /// Chunks not recorded yet.
    public var missingChunks: Int { state.withLock { chunkCount - $0.next - $0.ahead.count } }

    /// SHA-256 over the chunk digests in order, or nil while chunks are missing.
    public func finalDigest() -> SHA256Digest? {
        state.withLock { s in
            guard s.next == chunkCount else { return nil }
            if s.final == nil { s.final = s.hasher.finishSHA256() }
            return s.final
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

