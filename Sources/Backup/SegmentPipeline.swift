import Archive
import Foundation
import SnapdumpSystem
import Storage

/// ArchivePipeline's way for zstd archives: one queue of segments, each
/// worked on whole by one thread of a pool.
///
///     reader thread ──(≤ workers + 2 slots of 16 MiB)──► worker: SHA-256 + extents + zstd frame
///                                                          └─► in stream order: VMAWriter.append
///
/// The reader fills a slot with up to 4 chunks of data of one device (and
/// the chunks of holes between them, up to 1 GiB), a worker takes it, hashes
/// each cluster and copies it into its extent right after (the cluster is
/// in the CPU cache), compresses the segment as one frame into the slot and
/// — if the slot is the next in the stream — appends it and any that
/// finished behind it. A frame crosses threads once (reader → worker) where
/// the sequential path handed each chunk to a hasher and each frame through
/// libzstd's job queue (BENCHMARKS.md, "Issue 15").
///
/// Memory does not grow with the disk: `workers + 2` slots of 16 MiB read
/// buffer and room for a compressed frame, and per worker a 16 MiB extent
/// buffer and a zstd context.
final class SegmentPipeline: @unchecked Sendable {
    // @unchecked: `bytesRead` and `progressDone` are touched only by the appending
    // worker (one at a time, handed over under `Shared.cond`); the rest is immutable.
    static let chunksOfData = VMASegmentEncoder.maxDataClusters / DeviceDigest.clustersPerChunk
    static let chunksPerSegment = VMASegmentEncoder.maxClusters / DeviceDigest.clustersPerChunk

    /// One segment on its way: read, encoded, appended.
    final class Slot: @unchecked Sendable {
        // @unchecked: a slot belongs to one thread at a time (reader, one
        // worker, the appending worker), handed over under `Shared.cond`.
        let input: UnsafeMutableRawBufferPointer
        let frame: UnsafeMutableRawBufferPointer
        var sequence = 0
        var device = 0
        var firstChunk = 0
        /// Per chunk of the segment: where its bytes are in `input` (nil: a hole, not read) and its length.
        var chunks: [(offset: Int?, length: Int)] = []
        var segment: VMASegmentEncoder.Segment?
        var done: UInt64 = 0
        var read: UInt64 = 0

        init() {
            input = .allocate(byteCount: SegmentPipeline.chunksOfData * DeviceDigest.chunkSize, alignment: 4096)
            frame = .allocate(byteCount: VMASegmentEncoder.frameCapacity, alignment: 64)
        }

        deinit {
            input.deallocate()
            frame.deallocate()
        }
    }

    /// The state the threads share, behind `cond`.
    final class Shared: @unchecked Sendable {
        // @unchecked: every field is read and written under `cond`.
        let cond = NSCondition()
        var free: [Int]
        var queued: [Int] = []
        var finished: [Int: Int] = [:]  // sequence → slot
        var nextToAppend = 0
        var appending = false
        var segments = 0
        var readerDone = false
        var running = 0
        var failure: (any Error)?

        init(slots: Int) { free = Array(0..<slots) }

        func fail(_ error: any Error) {
            cond.lock()
            if failure == nil { failure = error }
            cond.broadcast()
            cond.unlock()
        }

        var isStopping: Bool { cond.lock(); defer { cond.unlock() }; return failure != nil }
    }

    /// Unowned: the threads end a moment after `run` returns and must not
    /// keep the writer alive then (an uncommitted writer's deinit removes its
    /// `.dat`); they touch it only while `run` waits for them.
    unowned let writer: VMAWriter
    let devices: [ArchivePipeline.Device]
    let sizes: [UInt64]
    let plans: [[Bool]]
    let workers: Int
    let bwlimitKiB: Int
    let progress: ProgressReporter?
    let interrupt: Interrupt
    /// Tests only: see `ArchivePipeline.beforeSegment`.
    var beforeSegment: (@Sendable (Int) throws -> Void)?

    init(writer: VMAWriter, devices: [ArchivePipeline.Device], sizes: [UInt64], plans: [[Bool]], workers: Int,
         bwlimitKiB: Int, progress: ProgressReporter?, interrupt: Interrupt) {
        self.writer = writer
        self.devices = devices
        self.sizes = sizes
        self.plans = plans
        self.workers = max(1, workers)
        self.bwlimitKiB = bwlimitKiB
        self.progress = progress
        self.interrupt = interrupt
    }

    /// Runs the pool with `first` as the first worker's encoder; the chunk digests go to `digests`.
    func run(first: VMASegmentEncoder, digests: [DeviceDigest]) throws -> UInt64 {
        var encoders = [first]
        for _ in 1..<workers {
            guard let e = try writer.makeSegmentEncoder() else { preconditionFailure("a zstd writer makes encoders") }
            encoders.append(e)
        }
        let slots = (0..<(workers + 2)).map { _ in Slot() }
        let shared = Shared(slots: slots.count)
        shared.running = workers + 1

        let reader = Thread { [self] in
            try? IOPriority.applyToCurrentThread()
            read(into: slots, shared)
        }
        reader.stackSize = 1 << 20
        let threads = encoders.map { encoder in
            let t = Thread { [self] in work(encoder, slots, shared, digests) }
            t.stackSize = 1 << 20
            return t
        }
        reader.start()
        threads.forEach { $0.start() }

        shared.cond.lock()
        while shared.running > 0 { shared.cond.wait() }
        let failure = shared.failure
        shared.cond.unlock()
        if let failure { throw failure }
        guard shared.nextToAppend == shared.segments else {
            throw BackupError("internal: \(shared.segments - shared.nextToAppend) of \(shared.segments) archive segments not written")
        }
        return bytesRead
    }

    private var bytesRead: UInt64 = 0

    // MARK: the reader

    private func read(into slots: [Slot], _ shared: Shared) {
        defer {
            shared.cond.lock()
            shared.readerDone = true
            shared.running -= 1
            shared.cond.broadcast()
            shared.cond.unlock()
        }
        let limit = BandwidthLimit(kibPerSecond: bwlimitKiB)
        let chunk = DeviceDigest.chunkSize
        var readBytes: UInt64 = 0
        var sequence = 0
        for (di, d) in devices.enumerated() {
            let plan = plans[di], source = d.source, size = sizes[di]
            var c = 0
            while c < plan.count {
                if let sig = interrupt.received { shared.fail(Interrupt.Interrupted(signal: sig)); return }
                shared.cond.lock()
                while shared.free.isEmpty && shared.failure == nil { shared.cond.wait() }
                if shared.failure != nil { shared.cond.unlock(); return }
                let slot = slots[shared.free.removeLast()]
                shared.cond.unlock()

                slot.sequence = sequence
                slot.device = di
                slot.firstChunk = c
                slot.chunks.removeAll(keepingCapacity: true)
                slot.segment = nil
                var used = 0, read: UInt64 = 0, done: UInt64 = 0
                while c < plan.count && slot.chunks.count < Self.chunksPerSegment && (used < Self.chunksOfData || !plan[c]) {
                    let offset = UInt64(c) * UInt64(chunk)
                    let length = Int(min(UInt64(chunk), size - offset))
                    if plan[c] {
                        let at = used * chunk
                        let inSource = Int(min(UInt64(length), source.size - offset))
                        do {
                            let n = try source.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: slot.input[at..<at + inSource]))
                            guard n == inSource else {
                                throw BackupError("short read of '\(source.name)' at offset \(offset): \(n) of \(inSource) bytes")
                            }
                        } catch {
                            shared.fail(error)
                            return
                        }
                        if inSource < length {
                            (slot.input.baseAddress! + at + inSource).initializeMemory(as: UInt8.self, repeating: 0, count: length - inSource)
                        }
                        slot.chunks.append((at, length))
                        used += 1
                        read += UInt64(length)
                    } else {
                        slot.chunks.append((nil, length))
                    }
                    done += UInt64(length)
                    c += 1
                }
                slot.read = read
                slot.done = done
                readBytes += read
                limit?.wait(afterTotal: readBytes) { shared.isStopping || interrupt.received != nil }
                shared.cond.lock()
                shared.queued.append(slots.firstIndex { $0 === slot }!)
                shared.segments += 1
                shared.cond.broadcast()
                shared.cond.unlock()
                sequence += 1
            }
        }
    }

    // MARK: the workers

    private func work(_ encoder: VMASegmentEncoder, _ slots: [Slot], _ shared: Shared, _ digests: [DeviceDigest]) {
        try? IOPriority.applyToCurrentThread()
        shared.cond.lock()
        defer {
            shared.running -= 1
            shared.cond.broadcast()
            shared.cond.unlock()
        }
        while true {
            while shared.queued.isEmpty && !shared.readerDone && shared.failure == nil { shared.cond.wait() }
            if shared.failure != nil || shared.queued.isEmpty { return }
            let index = shared.queued.removeFirst()
            shared.cond.unlock()
            let slot = slots[index]
            do {
                try beforeSegment?(slot.sequence)
                try encode(slot, encoder, digests)
            } catch {
                shared.cond.lock()
                if shared.failure == nil { shared.failure = error }
                shared.cond.broadcast()
                return
            }
            shared.cond.lock()
            shared.finished[slot.sequence] = index
            // Whoever finishes the next segment in the stream appends it and those finished behind it.
            guard !shared.appending else { continue }
            shared.appending = true
            while shared.failure == nil, let next = shared.finished.removeValue(forKey: shared.nextToAppend) {
                shared.cond.unlock()
                let s = slots[next]
                var failed: (any Error)?
                do {
                    try writer.append(s.segment!, frame: UnsafeRawBufferPointer(rebasing: s.frame[0..<s.segment!.frameBytes]))
                    bytesRead += s.read
                    progressDone += s.done
                    progress?.update(done: progressDone, zero: writer.statistics.zeroBytes)
                } catch {
                    failed = error
                }
                shared.cond.lock()
                if let failed, shared.failure == nil { shared.failure = failed }
                shared.nextToAppend += 1
                shared.free.append(next)
                shared.cond.broadcast()
            }
            shared.appending = false
            shared.cond.broadcast()
        }
    }

    /// Touched only by the appending thread (one at a time, under `appending`).
    private var progressDone: UInt64 = 0

    private func encode(_ slot: Slot, _ encoder: VMASegmentEncoder, _ digests: [DeviceDigest]) throws {
        let d = devices[slot.device], digest = digests[slot.device]
        for (k, chunk) in slot.chunks.enumerated() {
            let c = slot.firstChunk + k
            let first = UInt32(c * DeviceDigest.clustersPerChunk)
            if let at = chunk.offset {
                let data = UnsafeRawBufferPointer(rebasing: slot.input[at..<at + chunk.length])
                digest.record(chunk: c, digest: try encoder.addChunk(device: d.id, firstCluster: first, data: data))
            } else {
                digest.record(chunk: c, digest: chunk.length == DeviceDigest.chunkSize ? DeviceDigest.zeroChunkDigest : Self.zeroDigest(chunk.length))
                let clusters = (chunk.length + VMAFormat.clusterSize - 1) / VMAFormat.clusterSize
                for k in 0..<clusters { try encoder.addZeroCluster(device: d.id, cluster: first + UInt32(k)) }
            }
        }
        slot.segment = try encoder.seal(into: slot.frame)
    }

    /// The digest of a device's short last chunk that is a hole (once per device at most).
    private static func zeroDigest(_ length: Int) -> SHA256Digest {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        return DeviceDigest.digest(of: UnsafeRawBufferPointer(zeros))
    }
}
