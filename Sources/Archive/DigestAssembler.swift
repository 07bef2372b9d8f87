import Foundation
import SnapdumpSystem

/// Builds the content digest (`DeviceDigest`) of every device of an archive
/// from its clusters as a VMA stream delivers them — in any order the
/// format allows: clusters of one chunk may be spread over the whole stream.
///
/// A chunk's clusters are gathered in a 4 MiB buffer and the chunk is hashed
/// when its last cluster arrives. At most `maxBuffers` chunks, all devices
/// together, are held in memory. When a cluster needs one more, the chunk
/// touched longest ago is *deferred*: its digest is computed by `finish`
/// from the device's complete content, read back from the device's target
/// (the file or volume the caller writes every cluster to, so the digest is
/// the one of what was really written), or, for a device without a target,
/// from an unnamed spill file that holds the deferred chunks only. Memory
/// does not grow with device sizes or with disorder; the spill file grows
/// with the out-of-order data. One thread: not Sendable.
public final class DigestAssembler {
    public let maxBuffers: Int
    /// Chunks deferred (hashed by `finish` from the target or spill file).
    public private(set) var deferredChunks = 0

    private struct Key: Hashable, Comparable {
        var device: UInt8
        var chunk: Int
        static func < (a: Key, b: Key) -> Bool { (a.device, a.chunk) < (b.device, b.chunk) }
    }
    private struct Pending {
        var buffer: UnsafeMutableRawBufferPointer
        /// Bit k: cluster k of the chunk arrived (64 clusters per chunk).
        var received: UInt64
        /// Bit k: cluster k arrived as zeros and is not in `buffer` yet
        /// (filled only if the chunk turns out not to be all zero).
        var zeros: UInt64 = 0
        var nonZero: Bool
        var lastUse: UInt64
    }

    private let digests: [UInt8: DeviceDigest]
    private let clusterCounts: [UInt8: UInt64]
    private let targets: [UInt8: File]
    private let spillDirectory: String
    private var pending: [Key: Pending] = [:]
    private var pool: [UnsafeMutableRawBufferPointer] = []
    private var allocated = 0
    private var tick: UInt64 = 0
    /// Deferred chunks: their slot in the spill file, or nil when read back from the target.
    private var deferred: [Key: Int?] = [:]
    private var spill: File?
    private var spillSlots = 0
    private var scratch: UnsafeMutableRawBufferPointer?

    /// `targets[id]`, when given, must be readable and receive every cluster
    /// of device `id` (at its device offset) before `finish`.
    public init(devices: [VMADevice], targets: [UInt8: File] = [:], maxBuffers: Int = 8, spillDirectory: String? = nil) {
        precondition(maxBuffers >= 1)
        var d: [UInt8: DeviceDigest] = [:], c: [UInt8: UInt64] = [:]
        for dev in devices {
            d[dev.id] = DeviceDigest(deviceSize: dev.size)
            c[dev.id] = dev.clusterCount
        }
        digests = d
        clusterCounts = c
        self.targets = targets
        self.maxBuffers = maxBuffers
        self.spillDirectory = spillDirectory ?? ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    }

    deinit {
        for p in pending.values { p.buffer.deallocate() }
        for b in pool { b.deallocate() }
        scratch?.deallocate()
    }

    private func clustersIn(_ key: Key) -> Int {
        let first = UInt64(key.chunk) * UInt64(DeviceDigest.clustersPerChunk)
        return Int(min(UInt64(DeviceDigest.clustersPerChunk), clusterCounts[key.device]! - first))
    }

    /// Adds cluster `cluster` of device `device`, given as a VMA mask and its
    /// stored blocks (popcount(mask) × 4096 bytes, in bit order). Each
    /// cluster once, of a device passed to `init`, inside the device.
    public func add(device: UInt8, cluster: UInt32, mask: UInt16, blocks: UnsafeRawBufferPointer) throws(ArchiveError) {
        precondition(UInt64(cluster) < clusterCounts[device] ?? 0, "cluster \(cluster) of device \(device) beyond the device")
        let key = Key(device: device, chunk: Int(cluster) / DeviceDigest.clustersPerChunk)
        let index = Int(cluster) % DeviceDigest.clustersPerChunk
        if let slot = deferred[key] {
            guard let slot, mask != 0 else { return }
            let s = scratchBuffer()
            Self.expand(mask: mask, blocks: blocks, into: s.baseAddress!)
            try spillWrite(UnsafeRawBufferPointer(s), slot: slot, index: index)
            return
        }
        tick += 1
        var p: Pending
        if let existing = pending.removeValue(forKey: key) {
            p = existing
        } else {
            p = Pending(buffer: try takeBuffer(), received: 0, nonZero: false, lastUse: 0)
        }
        if mask == 0 {
            p.zeros |= 1 << UInt64(index)
        } else {
            Self.expand(mask: mask, blocks: blocks, into: p.buffer.baseAddress! + index * VMAFormat.clusterSize)
        }
        p.received |= 1 << UInt64(index)
        p.nonZero = p.nonZero || mask != 0
        p.lastUse = tick
        guard p.received.nonzeroBitCount == clustersIn(key) else {
            pending[key] = p
            return
        }
        let digest = digests[device]!
        let len = digest.chunkLength(key.chunk)
        if !p.nonZero && len == DeviceDigest.chunkSize {
            digest.record(chunk: key.chunk, digest: DeviceDigest.zeroChunkDigest)
        } else {
            Self.fillZeros(p.zeros, in: p.buffer)
            digest.record(chunk: key.chunk, digest: DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: p.buffer[0..<len])))
        }
        pool.append(p.buffer)
    }

    /// Adds `count` consecutive clusters of zeros from `firstCluster` on. A
    /// whole chunk of them that nothing else touched is recorded as the zero
    /// chunk at once, without a buffer: the cost follows the data, not the
    /// device size.
    public func addZeroRun(device: UInt8, firstCluster: UInt32, count: UInt32) throws(ArchiveError) {
        let perChunk = UInt64(DeviceDigest.clustersPerChunk)
        var cluster = UInt64(firstCluster)
        let end = cluster + UInt64(count)
        precondition(end <= clusterCounts[device] ?? 0, "clusters \(firstCluster)..<\(end) of device \(device) beyond the device")
        let digest = digests[device]!
        while cluster < end {
            let chunk = Int(cluster / perChunk)
            let chunkEnd = min(UInt64(chunk + 1) * perChunk, end)
            let key = Key(device: device, chunk: chunk)
            if cluster % perChunk == 0 && chunkEnd - cluster == perChunk && digest.chunkLength(chunk) == DeviceDigest.chunkSize
                && pending[key] == nil && deferred[key] == nil {
                digest.record(chunk: chunk, digest: DeviceDigest.zeroChunkDigest)
            } else {
                for c in cluster..<chunkEnd {
                    try add(device: device, cluster: UInt32(c), mask: 0, blocks: UnsafeRawBufferPointer(start: nil, count: 0))
                }
            }
            cluster = chunkEnd
        }
    }

    /// Zeroes the clusters of `buffer` whose bits are set in `zeros`.
    private static func fillZeros(_ zeros: UInt64, in buffer: UnsafeMutableRawBufferPointer) {
        var z = zeros
        while z != 0 {
            let i = z.trailingZeroBitCount
            z &= z - 1
            (buffer.baseAddress! + i * VMAFormat.clusterSize).initializeMemory(as: UInt8.self, repeating: 0, count: VMAFormat.clusterSize)
        }
    }

    /// Adds a whole 64 KiB cluster (bytes past the device end are ignored).
    public func add(device: UInt8, cluster: UInt32, data: UnsafeRawBufferPointer) throws(ArchiveError) {
        precondition(data.count >= VMAFormat.clusterSize)
        try add(device: device, cluster: cluster, mask: 0xFFFF, blocks: data)
    }

    /// Hashes the deferred chunks from the targets or the spill file and
    /// returns the digest of every device whose clusters all arrived.
    public func finish() throws(ArchiveError) -> [UInt8: SHA256Digest] {
        if !deferred.isEmpty {
            let buffer = try takeBuffer()
            defer { pool.append(buffer) }
            for (key, slot) in deferred.sorted(by: { $0.key < $1.key }) {
                let digest = digests[key.device]!
                let len = digest.chunkLength(key.chunk)
                let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<len])
                if let slot {
                    let n = try read(spill!, into: dst, at: UInt64(slot) * UInt64(DeviceDigest.chunkSize))
                    // The spill file is sparse: what was never written (zero clusters, its end) reads as zeros.
                    if n < len { (dst.baseAddress! + n).initializeMemory(as: UInt8.self, repeating: 0, count: len - n) }
                } else {
                    let target = targets[key.device]!
                    let offset = UInt64(key.chunk) * UInt64(DeviceDigest.chunkSize)
                    let n = try read(target, into: dst, at: offset)
                    guard n == len else {
                        throw ArchiveError(.io, path: target.path, "reading back device \(key.device) at offset \(offset) for its digest: \(n) of \(len) bytes")
                    }
                }
                digest.record(chunk: key.chunk, digest: DeviceDigest.digest(of: UnsafeRawBufferPointer(dst)))
            }
            deferred = [:]
        }
        return digests.compactMapValues { $0.finalDigest() }
    }

    /// A free chunk buffer: from the pool, a new one while under the limit,
    /// else the one of the chunk touched longest ago, which is deferred.
    private func takeBuffer() throws(ArchiveError) -> UnsafeMutableRawBufferPointer {
        if let b = pool.popLast() { return b }
        if allocated < maxBuffers {
            allocated += 1
            return .allocate(byteCount: DeviceDigest.chunkSize, alignment: 64)
        }
        let (key, p) = pending.min { $0.value.lastUse < $1.value.lastUse }!
        pending[key] = nil
        deferredChunks += 1
        if targets[key.device] != nil {
            deferred[key] = .some(nil)
        } else {
            let slot = spillSlots
            spillSlots += 1
            deferred[key] = slot
            // Zero clusters are not in the buffer: the sparse spill file reads them back as zeros.
            var received = p.received & ~p.zeros
            while received != 0 {
                let i = received.trailingZeroBitCount
                received &= received - 1
                let cluster = UnsafeRawBufferPointer(rebasing: p.buffer[(i * VMAFormat.clusterSize)..<((i + 1) * VMAFormat.clusterSize)])
                if !ZeroCheck.isZero(cluster) { try spillWrite(cluster, slot: slot, index: i) }
            }
        }
        return p.buffer
    }

    private func scratchBuffer() -> UnsafeMutableRawBufferPointer {
        if let s = scratch { return s }
        let s = UnsafeMutableRawBufferPointer.allocate(byteCount: VMAFormat.clusterSize, alignment: 64)
        scratch = s
        return s
    }

    private func spillWrite(_ cluster: UnsafeRawBufferPointer, slot: Int, index: Int) throws(ArchiveError) {
        let file = try spillFile()
        let offset = UInt64(slot) * UInt64(DeviceDigest.chunkSize) + UInt64(index * VMAFormat.clusterSize)
        do {
            try file.write(cluster, at: offset)
        } catch {
            throw ArchiveError(.io, path: file.path, "cannot write clusters too far out of order to hash them later", cause: error as? SystemError)
        }
    }

    /// Created on first use in `spillDirectory` and unlinked at once: nothing is left behind.
    private func spillFile() throws(ArchiveError) -> File {
        if let spill { return spill }
        var template = Array("\(spillDirectory)/snapdump-digest.XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw ArchiveError(.io, path: spillDirectory, "cannot create a spill file for clusters too far out of order",
                               cause: SystemError("mkostemp", spillDirectory))
        }
        let path = String(cString: template)
        unlink(path)
        let f = File(adopting: fd, path: path + " (deleted)")
        spill = f
        return f
    }

    private func read(_ file: File, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(ArchiveError) -> Int {
        do {
            return try file.read(into: buffer, at: offset)
        } catch {
            throw ArchiveError(.io, path: file.path, "cannot read back at offset \(offset) to compute a digest", cause: error as? SystemError)
        }
    }

    /// Writes a cluster's 64 KiB (zeros for clear mask bits) at `dst`.
    static func expand(mask: UInt16, blocks: UnsafeRawBufferPointer, into dst: UnsafeMutableRawPointer) {
        guard mask != 0 else {
            dst.initializeMemory(as: UInt8.self, repeating: 0, count: VMAFormat.clusterSize)
            return
        }
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
    }
}
