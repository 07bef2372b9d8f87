import Foundation
import SnapdumpSystem

/// Where `DigestAssembler` writes a device's content when it writes through
/// (restore, `vma extract`): the restore target.
public protocol DeviceWriter: AnyObject, Sendable {
    /// Writes `bytes` at device offset `offset`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Whether writes from several threads at once (to disjoint ranges) are safe.
    var allowsConcurrentWrites: Bool { get }
    /// For error messages: the file or volume.
    var name: String { get }
    /// Writes `bytes` at `offset`, perhaps asynchronously: `done` is called
    /// once (on any thread) when `bytes` may be reused, with the write's
    /// error if any. Only for writers that allow concurrent writes.
    func submit(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, done: @escaping @Sendable ((any Error)?) -> Void)
}

extension DeviceWriter {
    public func submit(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, done: @escaping @Sendable ((any Error)?) -> Void) {
        do { try write(bytes, at: offset) } catch { return done(error) }
        done(nil)
    }
}

/// A file or block device written past the page cache where it can be,
/// several writes in flight at once (`DirectFile.submit`).
extension DirectFile: DeviceWriter {
    public var allowsConcurrentWrites: Bool { true }
    public var name: String { file.path }
}

/// Builds the content digest (`DeviceDigest`) of every device of an archive
/// from its clusters as a VMA stream delivers them — in any order the
/// format allows: clusters of one chunk may be spread over the whole stream.
///
/// A chunk's clusters are gathered in a 4 MiB buffer. When its last cluster
/// arrives the buffer goes to one of `workers` background threads, which
/// hash it and — when the assembler *writes through* (`writers`) — write its
/// stored blocks to the device's target, runs of adjacent blocks in one
/// call from the 4 KiB-aligned buffer (so a `DirectFile` writes them past
/// the page cache), zero blocks skipped so a fresh target stays sparse. The
/// caller's thread only parses and copies; the SHA-256 and the writes of
/// one chunk overlap with the decoding and gathering of the next.
///
/// At most `maxBuffers` chunks, all devices together, are held in memory
/// (gathering or in the workers' hands). When a cluster needs one more and
/// none is coming back from a worker, the chunk touched longest ago is
/// *deferred*: its digest is computed by `finish` from the device's complete
/// content, read back from the device's target (the file or volume every
/// cluster is written to, so the digest is the one of what was really
/// written), or, for a device without a target, from an unnamed spill file
/// that holds the deferred chunks only. Memory does not grow with device
/// sizes or with disorder; the spill file grows with the out-of-order data.
/// Not Sendable: one caller thread (the workers are internal).
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
        /// Writing through: each cluster's VMA mask (which 4 KiB blocks are stored).
        var masks: [UInt16] = []
    }

    private let digests: [UInt8: DeviceDigest]
    private let clusterCounts: [UInt8: UInt64]
    private let targets: [UInt8: File]
    private let writers: [UInt8: any DeviceWriter]
    private let spillDirectory: String
    private var pending: [Key: Pending] = [:]
    private let workers: ChunkWorkers
    private var tick: UInt64 = 0
    /// Deferred chunks: their slot in the spill file, or nil when read back from the target.
    private var deferred: [Key: Int?] = [:]
    private var spill: File?
    private var spillSlots = 0
    private var scratch: UnsafeMutableRawBufferPointer?

    /// `targets[id]`, when given, must be readable and hold every cluster of
    /// device `id` (at its device offset) by `finish`: written by the caller,
    /// or by the assembler itself through `writers[id]` (then the caller
    /// writes nothing). `workers` threads hash (and write) complete chunks.
    public init(devices: [VMADevice], targets: [UInt8: File] = [:], writers: [UInt8: any DeviceWriter] = [:],
                maxBuffers: Int = 8, workers: Int = DigestAssembler.defaultWorkers, spillDirectory: String? = nil) {
        precondition(maxBuffers >= 1 && workers >= 1)
        var d: [UInt8: DeviceDigest] = [:], c: [UInt8: UInt64] = [:]
        for dev in devices {
            d[dev.id] = DeviceDigest(deviceSize: dev.size)
            c[dev.id] = dev.clusterCount
        }
        digests = d
        clusterCounts = c
        self.targets = targets
        self.writers = writers
        self.maxBuffers = maxBuffers
        self.workers = ChunkWorkers(threads: workers, maxBuffers: maxBuffers)
        self.spillDirectory = spillDirectory ?? ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    }

    /// One per core, at most two: the caller's thread and the decoder's take the rest.
    public static var defaultWorkers: Int { min(2, max(1, ProcessInfo.processInfo.activeProcessorCount)) }

    deinit {
        workers.stop()
        for p in pending.values { p.buffer.deallocate() }
        scratch?.deallocate()
    }

    /// Bytes the assembler wrote through `writers` (zero blocks are not written).
    public var bytesWritten: UInt64 { workers.bytesWritten }

    private func clustersIn(_ key: Key) -> Int {
        let first = UInt64(key.chunk) * UInt64(DeviceDigest.clustersPerChunk)
        return Int(min(UInt64(DeviceDigest.clustersPerChunk), clusterCounts[key.device]! - first))
    }

    /// Adds cluster `cluster` of device `device`, given as a VMA mask and its
    /// stored blocks (popcount(mask) × 4096 bytes, in bit order). Each
    /// cluster once, of a device passed to `init`, inside the device.
    public func add(device: UInt8, cluster: UInt32, mask: UInt16, blocks: UnsafeRawBufferPointer) throws(ArchiveError) {
        precondition(UInt64(cluster) < clusterCounts[device] ?? 0, "cluster \(cluster) of device \(device) beyond the device")
        try workers.check()
        let key = Key(device: device, chunk: Int(cluster) / DeviceDigest.clustersPerChunk)
        let index = Int(cluster) % DeviceDigest.clustersPerChunk
        if let slot = deferred[key] {
            if let writer = writers[device], mask != 0 {
                try workers.write(writer, device: device, mask: mask, blocks: blocks, cluster: cluster,
                                  deviceSize: digests[device]!.deviceSize)
            }
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
            if writers[device] != nil { p.masks = Array(repeating: 0, count: DeviceDigest.clustersPerChunk) }
        }
        if mask == 0 {
            p.zeros |= 1 << UInt64(index)
        } else {
            Self.expand(mask: mask, blocks: blocks, into: p.buffer.baseAddress! + index * VMAFormat.clusterSize)
            if !p.masks.isEmpty { p.masks[index] = mask }
        }
        p.received |= 1 << UInt64(index)
        p.nonZero = p.nonZero || mask != 0
        p.lastUse = tick
        guard p.received.nonzeroBitCount == clustersIn(key) else {
            pending[key] = p
            return
        }
        let digest = digests[device]!
        workers.submit(ChunkWorkers.Job(digest: digest, chunk: key.chunk, buffer: p.buffer, length: digest.chunkLength(key.chunk),
                                        zeros: p.zeros, nonZero: p.nonZero, masks: p.masks, writer: writers[device]))
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
    fileprivate static func fillZeros(_ zeros: UInt64, in buffer: UnsafeMutableRawBufferPointer) {
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

    /// Waits for the workers, hashes the deferred chunks from the targets or
    /// the spill file and returns the digest of every device whose clusters
    /// all arrived. Throws the first write error of a worker.
    public func finish() throws(ArchiveError) -> [UInt8: SHA256Digest] {
        try workers.drain()
        if !deferred.isEmpty {
            let buffer = try takeBuffer()
            defer { workers.giveBack(buffer) }
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
    /// one a worker gives back, else the one of the chunk touched longest
    /// ago, which is deferred (its clusters written through first).
    private func takeBuffer() throws(ArchiveError) -> UnsafeMutableRawBufferPointer {
        if let b = try workers.takeBuffer() { return b }
        let (key, p) = pending.min { $0.value.lastUse < $1.value.lastUse }!
        pending[key] = nil
        deferredChunks += 1
        if let writer = writers[key.device] {
            try workers.write(writer, chunk: key.chunk, buffer: UnsafeRawBufferPointer(p.buffer), masks: p.masks,
                              length: digests[key.device]!.chunkLength(key.chunk))
        }
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
        if mask == 0xFFFF {
            dst.copyMemory(from: blocks.baseAddress!, byteCount: VMAFormat.clusterSize)
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

/// The assembler's background threads: they hash complete chunks, write them
/// through, and give their buffers back. Also owns the buffer pool, which
/// both sides use.
private final class ChunkWorkers: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `cond`; a job's buffer
    // belongs to the one worker that took the job until it is given back.

    struct Job: @unchecked Sendable {
        // @unchecked: the buffer is handed over, not shared.
        var digest: DeviceDigest
        var chunk: Int
        var buffer: UnsafeMutableRawBufferPointer
        var length: Int
        var zeros: UInt64
        var nonZero: Bool
        var masks: [UInt16]
        var writer: (any DeviceWriter)?
    }

    private let threadCount: Int
    private let maxBuffers: Int
    private let cond = NSCondition()
    private let threads = DispatchGroup()
    private var started = false
    private var stopping = false
    private var jobs: [Job] = []
    private var jobHead = 0
    private var inFlight = 0
    /// Of `inFlight`, chunks hashed whose writes are in flight.
    private var writing = 0
    private var pool: [UnsafeMutableRawBufferPointer] = []
    private var allocated = 0
    private var written: UInt64 = 0
    private var failure: ArchiveError?
    /// Serialises writes to writers that do not allow concurrent ones.
    private let serial = NSLock()

    init(threads: Int, maxBuffers: Int) {
        threadCount = threads
        self.maxBuffers = maxBuffers
    }

    deinit {
        for b in pool { b.deallocate() }
    }

    var bytesWritten: UInt64 { cond.withLock { written } }

    /// The first write error of a worker, if any.
    func check() throws(ArchiveError) {
        cond.lock()
        let f = failure
        cond.unlock()
        if let f { throw f }
    }

    /// A free buffer (pooled, new while under the limit, or the next one a
    /// worker gives back); nil when all are held by chunks being gathered.
    func takeBuffer() throws(ArchiveError) -> UnsafeMutableRawBufferPointer? {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let f = failure { throw f }
            if let b = pool.popLast() { return b }
            // A new buffer only while the workers are not behind: chunks queued for them
            // come back soon, and an in-order stream then touches a few buffers, not all.
            if allocated < maxBuffers && inFlight - writing <= threadCount {
                allocated += 1
                // 4 KiB-aligned: runs of blocks are written from it with O_DIRECT.
                return .allocate(byteCount: DeviceDigest.chunkSize, alignment: DirectFile.alignment)
            }
            if inFlight == 0 { return nil }
            cond.wait()
        }
    }

    func giveBack(_ buffer: UnsafeMutableRawBufferPointer) {
        cond.withLock { pool.append(buffer) }
    }

    func submit(_ job: Job) {
        cond.lock()
        jobs.append(job)
        inFlight += 1
        if !started {
            started = true
            for i in 0..<threadCount {
                threads.enter()
                let t = Thread { [self] in
                    run()
                    threads.leave()
                }
                t.name = "digest-\(i)"
                t.start()
            }
        }
        cond.broadcast()
        cond.unlock()
    }

    /// Waits until every submitted chunk is hashed and written.
    func drain() throws(ArchiveError) {
        cond.lock()
        while inFlight > 0 { cond.wait() }
        let f = failure
        cond.unlock()
        if let f { throw f }
    }

    /// Stops the threads (after the jobs they hold) and frees the buffers of jobs not started.
    func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        cond.unlock()
        threads.wait()
        // Writes in flight read their buffers until they complete.
        cond.lock()
        while writing > 0 { cond.wait() }
        cond.unlock()
        for j in jobs[jobHead...] { j.buffer.deallocate() }
        jobs = []
        jobHead = 0
    }

    private func run() {
        cond.lock()
        while true {
            if stopping { break }
            guard jobHead < jobs.count else {
                cond.wait()
                continue
            }
            let job = jobs[jobHead]
            jobHead += 1
            if jobHead == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                jobHead = 0
            }
            let failed = failure != nil
            cond.unlock()
            var error: ArchiveError?
            /// The chunk's writes are in flight: the buffer comes back with their completions.
            var writing = false
            if !failed {
                do throws(ArchiveError) {
                    writing = try process(job)
                } catch let e {
                    error = e
                }
            }
            cond.lock()
            if let error, failure == nil { failure = error }
            if !writing {
                pool.append(job.buffer)
                inFlight -= 1
            }
            cond.broadcast()
        }
        cond.unlock()
    }

    /// Hashes a complete chunk and writes its stored blocks; true when the
    /// writes are still in flight (the buffer is then given back, and the
    /// job counted done, by the last write's completion).
    private func process(_ job: Job) throws(ArchiveError) -> Bool {
        if !job.nonZero && job.length == DeviceDigest.chunkSize {
            job.digest.record(chunk: job.chunk, digest: DeviceDigest.zeroChunkDigest)
            return false
        }
        DigestAssembler.fillZeros(job.zeros, in: job.buffer)
        let data = UnsafeRawBufferPointer(rebasing: job.buffer[0..<job.length])
        job.digest.record(chunk: job.chunk, digest: DeviceDigest.digest(of: data))
        guard let writer = job.writer, job.nonZero else { return false }
        guard writer.allowsConcurrentWrites else {
            try write(writer, chunk: job.chunk, buffer: UnsafeRawBufferPointer(job.buffer), masks: job.masks, length: job.length)
            return false
        }
        let runs = Self.runs(masks: job.masks, length: job.length)
        guard !runs.isEmpty else { return false }
        let base = UInt64(job.chunk) * UInt64(DeviceDigest.chunkSize)
        let pending = PendingWrites(buffer: job.buffer, remaining: runs.count)
        cond.withLock { writing += 1 }
        for r in runs {
            let offset = base + UInt64(r.lowerBound), name = writer.name
            writer.submit(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(job.buffer)[r]), at: offset) { [self] error in
                completed(pending, bytes: r.count, error: error.map {
                    ArchiveError(.io, path: name, "cannot write \(r.count) bytes at offset \(offset)", cause: $0 as? SystemError)
                })
            }
        }
        return true
    }

    /// A chunk whose writes are in flight.
    private final class PendingWrites: @unchecked Sendable {
        // @unchecked: `remaining` is guarded by the workers' `cond`; the buffer is handed over.
        let buffer: UnsafeMutableRawBufferPointer
        var remaining: Int
        init(buffer: UnsafeMutableRawBufferPointer, remaining: Int) {
            self.buffer = buffer
            self.remaining = remaining
        }
    }

    /// One write of `pending` is done: after its last, the buffer goes back to the pool.
    private func completed(_ pending: PendingWrites, bytes: Int, error: ArchiveError?) {
        cond.lock()
        if let error {
            if failure == nil { failure = error }
        } else {
            written += UInt64(bytes)
        }
        pending.remaining -= 1
        if pending.remaining == 0 {
            pool.append(pending.buffer)
            inFlight -= 1
            writing -= 1
            cond.broadcast()
        }
        cond.unlock()
    }

    /// The byte ranges of a chunk's stored blocks (`masks`: one VMA mask per
    /// cluster), adjacent blocks as one range, the last cut at `length`.
    static func runs(masks: [UInt16], length: Int) -> [Range<Int>] {
        let blocks = masks.count * VMAFormat.blocksPerCluster
        func stored(_ b: Int) -> Bool { masks[b / VMAFormat.blocksPerCluster] & (1 << (b % VMAFormat.blocksPerCluster)) != 0 }
        var runs: [Range<Int>] = []
        var b = 0
        while b < blocks {
            // Whole clusters of nothing stored are skipped at once.
            if b % VMAFormat.blocksPerCluster == 0 && masks[b / VMAFormat.blocksPerCluster] == 0 {
                b += VMAFormat.blocksPerCluster
                continue
            }
            guard stored(b) else { b += 1; continue }
            var e = b + 1
            while e < blocks && stored(e) { e += 1 }
            let start = b * VMAFormat.blockSize, end = min(e * VMAFormat.blockSize, length)
            if end > start { runs.append(start..<end) }
            b = e
        }
        return runs
    }

    /// Writes the stored blocks of a chunk gathered in `buffer` (`masks`: one
    /// VMA mask per cluster), each run of adjacent blocks in one call, the
    /// last one cut at `length`.
    @discardableResult
    func write(_ writer: any DeviceWriter, chunk: Int, buffer: UnsafeRawBufferPointer, masks: [UInt16], length: Int) throws(ArchiveError) -> UInt64 {
        let base = UInt64(chunk) * UInt64(DeviceDigest.chunkSize)
        var total: UInt64 = 0
        for r in Self.runs(masks: masks, length: length) {
            try write(writer, UnsafeRawBufferPointer(rebasing: buffer[r]), at: base + UInt64(r.lowerBound))
            total += UInt64(r.count)
        }
        cond.withLock { written += total }
        return total
    }

    /// Writes the stored blocks of one cluster (a chunk already deferred).
    @discardableResult
    func write(_ writer: any DeviceWriter, device: UInt8, mask: UInt16, blocks: UnsafeRawBufferPointer, cluster: UInt32,
               deviceSize: UInt64) throws(ArchiveError) -> UInt64 {
        let offset = UInt64(cluster) * UInt64(VMAFormat.clusterSize)
        let valid = Int(min(UInt64(VMAFormat.clusterSize), deviceSize - offset))
        var total: UInt64 = 0
        var j = 0, src = 0
        while j < VMAFormat.blocksPerCluster {
            guard mask & (1 << j) != 0 else { j += 1; continue }
            var k = j
            while k < VMAFormat.blocksPerCluster && mask & (1 << k) != 0 { k += 1 }
            let len = min((k - j) * VMAFormat.blockSize, valid - j * VMAFormat.blockSize)
            if len > 0 {
                try write(writer, UnsafeRawBufferPointer(rebasing: blocks[src..<src + len]), at: offset + UInt64(j * VMAFormat.blockSize))
                total += UInt64(len)
            }
            src += (k - j) * VMAFormat.blockSize
            j = k
        }
        cond.withLock { written += total }
        return total
    }

    private func write(_ writer: any DeviceWriter, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(ArchiveError) {
        do {
            if writer.allowsConcurrentWrites {
                try writer.write(bytes, at: offset)
            } else {
                try serial.withLock { try writer.write(bytes, at: offset) }
            }
        } catch {
            throw ArchiveError(.io, path: writer.name, "cannot write \(bytes.count) bytes at offset \(offset)", cause: error as? SystemError)
        }
    }
}
