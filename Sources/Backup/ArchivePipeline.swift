import Archive
import Foundation
import SnapdumpSystem
import Storage

/// Streams block sources into a VMA writer as a bounded pipeline:
///
///     reader thread ──(≤ N chunk buffers)──► this thread: VMA writer (+ zstd workers)
///                                              └─► hashing on a concurrent queue
///
/// The reader runs ahead by at most `bufferCount` chunks of 4 MiB, so memory
/// does not grow with disk size; reading, hashing, compressing (libzstd's own
/// workers) and writing overlap. Ranges the storage reports as holes or zeros
/// are never read: their clusters are stored as zero clusters and their chunk
/// digests are known without hashing.
///
/// zstd archives on two threads or more take `SegmentPipeline` instead: one
/// queue of 16 MiB segments, each hashed, built and compressed by one worker.
final class ArchivePipeline {
    struct Device {
        var id: UInt8
        var name: String
        var source: any BlockSource
    }

    struct Result {
        var digests: [UInt8: SHA256Digest]
        var bytesRead: UInt64
        var bytesTotal: UInt64
    }

    let writer: VMAWriter
    let devices: [Device]
    let bwlimitKiB: Int
    let bufferCount: Int
    let progress: ProgressReporter?
    let interrupt: Interrupt
    /// Tests only: called on a zstd worker before it encodes segment `n` (0-based); a throw fails that segment.
    var beforeSegment: (@Sendable (Int) throws -> Void)?

    init(writer: VMAWriter, devices: [Device], bwlimitKiB: Int, bufferCount: Int = 8, progress: ProgressReporter?, interrupt: Interrupt) {
        self.interrupt = interrupt
        self.writer = writer
        self.devices = devices
        self.bwlimitKiB = bwlimitKiB
        self.bufferCount = bufferCount
        self.progress = progress
    }

    private enum Item {
        case zero(device: Int, chunk: Int)
        case data(device: Int, chunk: Int, buffer: Int, length: Int)
        case failed(any Error)
        case done
    }

    static let chunkSize = DeviceDigest.chunkSize

    func run() throws -> Result {
        try? IOPriority.applyToCurrentThread()
        let chunk = Self.chunkSize
        let buffers = ChunkBuffers(count: bufferCount, size: chunk)
        let free = BoundedQueue<Int>(capacity: bufferCount)
        for i in 0..<bufferCount { free.push(i) }
        let items = BoundedQueue<Item>(capacity: bufferCount * 4)
        let cancelled = AtomicFlag()

        // Each device's size in the archive: whole sectors (VMAFormat.paddedDeviceSize); an odd tail past the source's end reads as zeros.
        let sizes = devices.map { d in writer.devices.first { $0.id == d.id }?.size ?? d.source.size }
        // Which chunks hold data, per device, from the storage's allocation map.
        var plans: [[Bool]] = []
        for (i, d) in devices.enumerated() {
            let count = Int((sizes[i] + UInt64(chunk) - 1) / UInt64(chunk))
            var needs = [Bool](repeating: false, count: count)
            for r in try d.source.allocationMap() where r.kind == .data && r.length > 0 {
                let first = Int(r.offset / UInt64(chunk)), last = Int((r.offset + r.length - 1) / UInt64(chunk))
                for c in first...last { needs[c] = true }
            }
            plans.append(needs)
        }
        let total = sizes.reduce(0, +)
        progress?.start(total: total)

        // zstd on two threads or more: segments on a pool (SegmentPipeline), as many workers as zstd threads.
        // With one thread (vzdump's default) a lone worker would hash and compress in turn, where the
        // sequential path hashes on one core while libzstd's worker compresses on the other.
        if case .zstd(_, let threads) = writer.compression, threads >= 2, let encoder = try writer.makeSegmentEncoder() {
            let digests = sizes.map { DeviceDigest(deviceSize: $0) }
            let pool = SegmentPipeline(writer: writer, devices: devices, sizes: sizes, plans: plans, workers: Int(threads),
                                       bwlimitKiB: bwlimitKiB, progress: progress, interrupt: interrupt)
            pool.beforeSegment = beforeSegment
            let bytesRead = try pool.run(first: encoder, digests: digests)
            progress?.finish()
            return Result(digests: try finalDigests(digests), bytesRead: bytesRead, bytesTotal: total)
        }

        let sources = devices.map(\.source)
        let bwlimit = bwlimitKiB
        let readerPlans = plans
        let interrupt = self.interrupt
        let reader = Thread {
            try? IOPriority.applyToCurrentThread()
            let limit = BandwidthLimit(kibPerSecond: bwlimit)
            var readBytes: UInt64 = 0
            for (di, source) in sources.enumerated() {
                for c in 0..<readerPlans[di].count {
                    if cancelled.isSet { items.push(.done); return }
                    if let sig = interrupt.received { items.push(.failed(Interrupt.Interrupted(signal: sig))); return }
                    guard readerPlans[di][c] else { items.push(.zero(device: di, chunk: c)); continue }
                    let b = free.pop()
                    let offset = UInt64(c) * UInt64(chunk)
                    let length = Int(min(UInt64(chunk), sizes[di] - offset))
                    let inSource = Int(min(UInt64(length), source.size - offset))
                    do {
                        let buf = UnsafeMutableRawBufferPointer(rebasing: buffers[b][0..<inSource])
                        let n = try source.read(at: offset, into: buf)
                        guard n == inSource else {
                            throw BackupError("short read of '\(source.name)' at offset \(offset): \(n) of \(inSource) bytes")
                        }
                        if inSource < length {
                            (buffers[b].baseAddress! + inSource).initializeMemory(as: UInt8.self, repeating: 0, count: length - inSource)
                        }
                    } catch {
                        items.push(.failed(error))
                        return
                    }
                    readBytes += UInt64(length)
                    limit?.wait(afterTotal: readBytes) { cancelled.isSet || interrupt.received != nil }
                    items.push(.data(device: di, chunk: c, buffer: b, length: length))
                }
            }
            items.push(.done)
        }
        reader.stackSize = 1 << 20
        reader.start()

        let digests = sizes.map { DeviceDigest(deviceSize: $0) }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        let cluster = Archive.VMAFormat.clusterSize
        let clusterBuf = UnsafeMutableRawBufferPointer.allocate(byteCount: cluster, alignment: 4096)
        defer { clusterBuf.deallocate() }
        let hashQueue = DispatchQueue(label: "snapdump.hash", attributes: .concurrent)
        var bytesRead: UInt64 = 0
        var done: UInt64 = 0
        var readerDone = false
        let hashing = DispatchGroup()
        var inFlight: SharedBuffer?

        func drainAfterError() {
            cancelled.set()
            // Let a blocked reader finish: keep returning buffers until it reports done/failed.
            while true {
                switch items.pop() {
                case .data(_, _, let b, _): free.push(b)
                case .zero: continue
                case .done, .failed: return
                }
            }
        }

        do {
            loop: while true {
                switch items.pop() {
                case .done:
                    readerDone = true
                    break loop
                case .failed(let error):
                    // The reader has stopped: nothing left to drain.
                    readerDone = true
                    cancelled.set()
                    throw error
                case let .zero(di, c):
                    let d = devices[di], digest = digests[di]
                    let length = digest.chunkLength(c)
                    digest.record(chunk: c, digest: length == chunk ? DeviceDigest.zeroChunkDigest
                                  : DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: zeros[0..<length])))
                    let first = c * DeviceDigest.clustersPerChunk
                    let clusters = (length + cluster - 1) / cluster
                    for k in 0..<clusters { try writer.addZeroCluster(device: d.id, cluster: UInt32(first + k)) }
                    done += UInt64(length)
                    progress?.update(done: done, zero: writer.statistics.zeroBytes)
                case let .data(di, c, b, length):
                    let d = devices[di], digest = digests[di]
                    let buf = UnsafeRawBufferPointer(buffers[b])
                    // The buffer goes back to the reader when both the hasher and the writer are done
                    // with it, so hashing chunk N overlaps with writing chunks N, N+1, ….
                    let share = SharedBuffer(index: b, owners: 2)
                    inFlight = share
                    let chunkIndex = c
                    hashQueue.async(group: hashing) {
                        let data = UnsafeRawBufferPointer(buffers[b])
                        digest.record(chunk: chunkIndex, digest: DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: data[0..<length])))
                        if share.release() { free.push(b) }
                    }
                    let first = c * DeviceDigest.clustersPerChunk
                    var off = 0
                    var k = 0
                    while off < length {
                        let n = min(cluster, length - off)
                        if n == cluster {
                            try writer.addCluster(device: d.id, cluster: UInt32(first + k), data: UnsafeRawBufferPointer(rebasing: buf[off..<off + n]))
                        } else {
                            // The device's last, partial cluster: pad with zeros.
                            clusterBuf.initializeMemory(as: UInt8.self, repeating: 0)
                            clusterBuf.copyMemory(from: UnsafeRawBufferPointer(rebasing: buf[off..<off + n]))
                            try writer.addCluster(device: d.id, cluster: UInt32(first + k), data: UnsafeRawBufferPointer(clusterBuf))
                        }
                        off += n
                        k += 1
                    }
                    inFlight = nil
                    if share.release() { free.push(b) }
                    bytesRead += UInt64(length)
                    done += UInt64(length)
                    progress?.update(done: done, zero: writer.statistics.zeroBytes)
                }
            }
        } catch {
            // Give back the writer's share of a chunk it did not finish, let the reader stop,
            // and let every hash finish before the buffers are freed.
            if let share = inFlight, share.release() { free.push(share.index) }
            if !readerDone { drainAfterError() }
            hashing.wait()
            throw error
        }
        hashing.wait()
        progress?.finish()
        return Result(digests: try finalDigests(digests), bytesRead: bytesRead, bytesTotal: total)
    }

    private func finalDigests(_ digests: [DeviceDigest]) throws -> [UInt8: SHA256Digest] {
        var result: [UInt8: SHA256Digest] = [:]
        for (i, d) in devices.enumerated() {
            guard let digest = digests[i].finalDigest() else { throw BackupError("internal: digest of \(d.name) incomplete") }
            result[d.id] = digest
        }
        return result
    }
}

/// The pipeline's chunk buffers. Each buffer is owned by one stage at a time,
/// handed over through the queues.
final class ChunkBuffers: @unchecked Sendable {
    // @unchecked: a buffer index is held by exactly one thread at a time (reader,
    // writer, hasher), passed through BoundedQueue, which synchronizes.
    private let buffers: [UnsafeMutableRawBufferPointer]

    init(count: Int, size: Int) {
        buffers = (0..<count).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096) }
    }

    subscript(i: Int) -> UnsafeMutableRawBufferPointer { buffers[i] }

    deinit { buffers.forEach { $0.deallocate() } }
}

/// A blocking FIFO with a fixed capacity (the pipeline's back-pressure).
final class BoundedQueue<T>: @unchecked Sendable {
    // @unchecked: all state is behind `cond`.
    private var items: [T] = []
    private var head = 0
    private let capacity: Int
    private let cond = NSCondition()

    init(capacity: Int) { self.capacity = capacity }

    func push(_ item: T) {
        cond.lock()
        while items.count - head >= capacity { cond.wait() }
        items.append(item)
        cond.broadcast()
        cond.unlock()
    }

    func pop() -> T {
        cond.lock()
        while items.count - head == 0 { cond.wait() }
        let item = items[head]
        head += 1
        if head > 1024 { items.removeFirst(head); head = 0 }
        cond.broadcast()
        cond.unlock()
        return item
    }
}

/// A chunk buffer held by several stages; the last to let go returns it.
final class SharedBuffer: @unchecked Sendable {
    // @unchecked: `owners` is guarded by `lock`.
    let index: Int
    private var owners: Int
    private let lock = NSLock()

    init(index: Int, owners: Int) {
        self.index = index
        self.owners = owners
    }

    /// True for the last owner to release.
    func release() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        owners -= 1
        return owners == 0
    }
}

/// A flag set once, read from several threads.
final class AtomicFlag: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}
