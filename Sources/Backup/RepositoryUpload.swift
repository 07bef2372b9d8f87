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
/// other digest comes from the previous index (`BackupWriter.addDisk(previous:changed:)`);
/// of a changed chunk only the ranges the storage reported are read, laid
/// over the previous backup's chunk. Reported ranges the storage says are
/// zeros, and ranges inside holes of the source, are zero-filled unread.
///
/// Reads are counted against `--bwlimit` and stop at SIGINT/SIGTERM.
final class RepositoryUpload {
    struct Disk {
        var name: String
        var size: UInt64
        var source: any BlockSource
        /// Incremental: the previous backup's index (of `previousSnapshot`), and what the storage says changed since its base.
        var previous: FixedIndex? = nil
        var previousSnapshot: SnapshotName? = nil
        var changed: ChangedChunks? = nil
    }

    /// Per disk: chunks of which anything was read from the source, digests taken from the previous index unread,
    /// bytes read, and what the repository stored for it (disks are uploaded one after the other).
    struct DiskCounts {
        var chunks: Int
        var read: Int
        var fromPrevious: Int
        /// Bytes read from the source (holes and reported zeros are not read).
        var bytesRead: UInt64 = 0
        var newChunks: Int = 0
        var storedBytes: UInt64 = 0
        /// Incremental: changed chunks built from the previous chunk with only their changed ranges read.
        var patched: Int = 0
        /// Of `patched`: their hash resumed at the first changed frame (the previous backup's hash states).
        var resumed: Int = 0
        /// Incremental: changed chunks read whole because the previous chunk could not be read back, and why (the first).
        var previousUnreadable: Int = 0
        var previousUnreadableReason: String? = nil
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
        // Which chunks hold data, per disk, from the storage's allocation map (its data ranges kept for sub-chunk reads).
        var plans: [[Bool]] = []
        var dataRanges: [[Range<UInt64>]] = []
        for d in disks {
            var needs = [Bool](repeating: false, count: FixedIndex.chunkCount(size: d.size, chunkSize: chunk))
            var data: [Range<UInt64>] = []
            for r in try d.source.allocationMap() where r.kind == .data && r.length > 0 {
                let first = Int(r.offset / chunk), last = min(Int((r.offset + r.length - 1) / chunk), needs.count - 1)
                if first <= last { for c in first...last { needs[c] = true } }
                data.append(r.offset..<r.offset + r.length)
            }
            plans.append(needs)
            dataRanges.append(data)
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
            let needs = plans[di], data = dataRanges[di], source = d.source, size = d.size, diskBase = base, changed = d.changed
            let readLock = Mutex(())
            // addDisk may ask twice for one chunk: count each hole once.
            let counted = Mutex([Bool](repeating: false, count: needs.count))
            // Chunks anything was read of (an incremental backup may read several ranges of one).
            let touched = Mutex([Bool](repeating: false, count: needs.count))
            let diskBytes = Atomic<UInt64>(0)
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
                touched.withLock { $0[Int(offset / chunk)] = true }
                diskBytes.add(UInt64(inSource), ordering: .relaxed)
                let sofar = readBytes.add(UInt64(buffer.count), ordering: .relaxed).newValue
                limit?.wait(afterTotal: sofar) { interrupt.received != nil }
            }
            let knownZero: @Sendable (UInt64, Int) -> Bool = { offset, length in
                let c = Int(offset / chunk)
                // A changed range of an incremental backup: zeros if the storage reported it so, or inside a hole.
                if Self.reportedZero(changed, chunk: c, offset, UInt64(length)) { return true }
                if length < Int(chunk) || offset % chunk != 0 { return !Self.overlaps(data, offset..<offset + UInt64(length)) }
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
            var c = DiskCounts(chunks: needs.count, read: 0, fromPrevious: 0)
            let statsBefore = writer.stats
            if let previous = d.previous, let changed {
                let u = try writer.addDisk(name: d.name + ".img", size: size, previous: previous, changed: changed.indices,
                                           changedRanges: { i in changed.ranges(ofChunk: i).map { $0.offset..<$0.offset + $0.length } },
                                           previousSnapshot: d.previousSnapshot, read: read, knownZero: knownZero, progress: report)
                index = u.index
                c.fromPrevious = u.chunksReused
                c.patched = u.chunksPatched
                c.resumed = u.chunksResumed
                c.previousUnreadable = u.previousUnreadable
                c.previousUnreadableReason = u.previousUnreadableReason
            } else {
                index = try writer.addDisk(name: d.name + ".img", size: size, read: read, knownZero: knownZero, progress: report)
            }
            if let sig = interrupt.received { throw Interrupt.Interrupted(signal: sig) }
            indexes.append(index)
            let statsAfter = writer.stats
            c.read = touched.withLock { $0.filter { $0 }.count }
            c.bytesRead = diskBytes.load(ordering: .relaxed)
            c.newChunks = statsAfter.count - statsBefore.count
            c.storedBytes = statsAfter.compressedSize - statsBefore.compressedSize
            counts.append(c)
            base += size
        }
        progress?.finish()
        return Result(indexes: indexes, bytesRead: readBytes.load(ordering: .relaxed), bytesTotal: total,
                      zeroBytes: zeroBytes.load(ordering: .relaxed), disks: counts)
    }

    /// Whether the storage reported `offset ..< offset+length` (inside chunk `c`) as zeros.
    static func reportedZero(_ changed: ChangedChunks?, chunk c: Int, _ offset: UInt64, _ length: UInt64) -> Bool {
        guard let changed else { return false }
        return changed.ranges(ofChunk: c).contains { $0.kind == .zero && $0.offset <= offset && offset + length <= $0.offset + $0.length }
    }

    /// Whether `range` overlaps any of the sorted, disjoint `ranges`.
    static func overlaps(_ ranges: [Range<UInt64>], _ range: Range<UInt64>) -> Bool {
        // The first range ending after range's start.
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound <= range.lowerBound { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].lowerBound < range.upperBound
    }
}
