import Archive
import Foundation
import Repository
import SnapdumpSystem
import Storage
import Synchronization

/// The archive phase of a backup into a repository: each frozen disk read
/// in 4 MiB chunks by `BackupWriter.addDisk` (several threads hash and
/// compress; reads of one source are serialised, so any `BlockSource` works),
/// only chunks the repository lacks written. Ranges the storage reports as
/// holes are not read: they are the zero chunk, stored at most once.
///
/// Incremental (`Disk.previous`): only the changed chunks are read, every
/// other digest comes from the previous index (`BackupWriter.addDisk(previous:changed:)`).
///
/// Reads are counted against `--bwlimit` and stop at SIGINT/SIGTERM.
final class RepositoryUpload {
    struct Disk {
        var name: String
        var size: UInt64
        var source: any BlockSource
        /// Incremental: the previous backup's index, and the chunks the storage says changed since its base.
        var previous: FixedIndex? = nil
        var changed: IndexSet? = nil
    }

    /// Per disk: chunks read from the source, digests taken from the previous index unread,
    /// bytes read, and what the repository stored for it (disks are uploaded one after the other).
    struct DiskCounts {
        var chunks: Int
        var read: Int
        var fromPrevious: Int
        var bytesRead: UInt64 = 0
        var newChunks: Int = 0
        var storedBytes: UInt64 = 0
    }

    struct Result {
        var indexes: [FixedIndex]
        var bytesRead: UInt64
        var bytesTotal: UInt64
        var zeroBytes: UInt64
        var disks: [DiskCounts]
    }

    let writer: BackupWriter
    var disks: [Disk]
    let bwlimitKiB: Int
    let progress: ProgressReporter?
    let interrupt: Interrupt

    init(writer: BackupWriter, disks: [Disk], bwlimitKiB: Int, progress: ProgressReporter?, interrupt: Interrupt) {
        self.writer = writer
        self.disks = disks
        self.bwlimitKiB = bwlimitKiB
        self.progress = progress
        self.interrupt = interrupt
    }

    func run() throws -> Result {
        try? IOPriority.applyToCurrentThread()
        let chunk = FixedIndex.defaultChunkSize
        // Which chunks hold data, per disk, from the storage's allocation map.
        var plans: [[Bool]] = []
        for d in disks {
            var needs = [Bool](repeating: false, count: FixedIndex.chunkCount(size: d.size, chunkSize: chunk))
            for r in try d.source.allocationMap() where r.kind == .data && r.length > 0 {
                let first = Int(r.offset / chunk), last = min(Int((r.offset + r.length - 1) / chunk), needs.count - 1)
                if first <= last { for c in first...last { needs[c] = true } }
            }
            plans.append(needs)
        }
        let total = disks.reduce(0) { $0 + $1.size }
        progress?.start(total: total)
        let limit = BandwidthLimit(kibPerSecond: bwlimitKiB)
        let readBytes = Atomic<UInt64>(0)
        let zeroBytes = Atomic<UInt64>(0)
        // ProgressReporter is single-threaded: the workers report under this lock.
        let progressLock = Mutex(())
        let interrupt = self.interrupt
        var indexes: [FixedIndex] = []
        var counts: [DiskCounts] = []
        var base: UInt64 = 0
        for (di, d) in disks.enumerated() {
            let needs = plans[di], source = d.source, size = d.size, diskBase = base
            let readLock = Mutex(())
            // addDisk may ask twice for one chunk: count each hole once.
            let counted = Mutex([Bool](repeating: false, count: needs.count))
            let chunksRead = Atomic<Int>(0)
            let read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { offset, buffer in
                if let sig = interrupt.received { throw Interrupt.Interrupted(signal: sig) }
                // Past the source's end (an odd tail) the disk reads as zeros.
                let inSource = offset < source.size ? Int(min(UInt64(buffer.count), source.size - offset)) : 0
                try readLock.withLock { _ in
                    var done = 0
                    while done < inSource {
                        let n = try source.read(at: offset + UInt64(done),
                                                into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<inSource]))
                        guard n > 0 else {
                            throw BackupError("short read of '\(source.name)' at offset \(offset): \(done) of \(inSource) bytes")
                        }
                        done += n
                    }
                }
                if inSource < buffer.count {
                    (buffer.baseAddress! + inSource).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - inSource)
                }
                chunksRead.add(1, ordering: .relaxed)
                let sofar = readBytes.add(UInt64(buffer.count), ordering: .relaxed).newValue
                limit?.wait(afterTotal: sofar) { interrupt.received != nil }
            }
            let knownZero: @Sendable (UInt64, Int) -> Bool = { offset, length in
                let c = Int(offset / chunk)
                guard !needs[c] else { return false }
                if counted.withLock({ let first = !$0[c]; $0[c] = true; return first }) {
                    zeroBytes.add(UInt64(length), ordering: .relaxed)
                }
                return true
            }
            let report: @Sendable (UInt64) -> Void = { [progress] done in
                guard let progress else { return }
                progressLock.withLock { _ in
                    progress.update(done: diskBase + done, zero: zeroBytes.load(ordering: .relaxed))
                }
            }
            let index: FixedIndex
            var fromPrevious = 0
            let statsBefore = writer.stats, readBefore = readBytes.load(ordering: .relaxed)
            if let previous = d.previous, let changed = d.changed {
                let u = try writer.addDisk(name: d.name + ".img", size: size, previous: previous, changed: changed,
                                           read: read, knownZero: knownZero, progress: report)
                index = u.index
                fromPrevious = u.chunksReused
            } else {
                index = try writer.addDisk(name: d.name + ".img", size: size, read: read, knownZero: knownZero, progress: report)
            }
            if let sig = interrupt.received { throw Interrupt.Interrupted(signal: sig) }
            indexes.append(index)
            let statsAfter = writer.stats
            counts.append(DiskCounts(chunks: needs.count, read: chunksRead.load(ordering: .relaxed), fromPrevious: fromPrevious,
                                     bytesRead: readBytes.load(ordering: .relaxed) - readBefore,
                                     newChunks: statsAfter.count - statsBefore.count,
                                     storedBytes: statsAfter.compressedSize - statsBefore.compressedSize))
            base += size
        }
        progress?.finish()
        return Result(indexes: indexes, bytesRead: readBytes.load(ordering: .relaxed), bytesTotal: total,
                      zeroBytes: zeroBytes.load(ordering: .relaxed), disks: counts)
    }
}
