import Foundation
import SnapdumpSystem
import Storage
import Synchronization

/// A thread that keeps overwriting random blocks of one or more raw volume
/// files, like a guest does, while a snapshot is taken.
///
/// Every write carries a generation number 1, 2, 3, … (one sequence across all
/// volumes). `started` is the highest generation whose write has begun,
/// `completed` the highest whose write has returned. A snapshot taken between
/// reading `completed` (= s) and `started` (= e) must equal the volumes' state
/// after exactly the first C writes, for one C with s ≤ C ≤ e: every write that
/// finished before the snapshot began is in it, nothing written after it
/// returned is, and no write is in it without all earlier ones (crash
/// consistency). `verifySnapshot` checks exactly that.
final class ConcurrentWriter: @unchecked Sendable {
    // @unchecked: `log` and `error` are written only by the writer thread and read
    // only after `stop()` has joined it (the semaphore orders the accesses).

    struct Target {
        var path: String
        var tag: UInt64
        var blocks: Range<Int>
        /// Opens the volume when `path` is not a file (an RBD image): librbd, no cache.
        var open: (() throws -> any VolumeWriter)? = nil
    }

    let targets: [Target]
    /// O_DIRECT (what QEMU's cache=none does) where the filesystem takes it; else buffered writes.
    private(set) var direct = false
    private var files: [any VolumeWriter] = []
    private let startedGen = Atomic<UInt64>(0)
    private let completedGen = Atomic<UInt64>(0)
    private let stopRequested = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private var seed: UInt64
    /// Generations before this run (stamps already on the volumes); ours start at `base + 1`.
    let base: UInt64
    /// `log[g - base - 1]` is generation g: which target and block it wrote.
    private(set) var log: [(target: Int, block: Int)] = []
    private var error: Error?

    init(targets: [Target], seed: UInt64, base: UInt64 = 0) throws {
        self.targets = targets
        self.seed = seed
        self.base = base
        startedGen.store(base, ordering: .relaxed)
        completedGen.store(base, ordering: .relaxed)
        direct = true
        if targets.contains(where: { $0.open != nil }) {
            // librbd with its cache off: a returned write is on the OSDs, like O_DIRECT.
            files = try targets.map { t in
                guard let open = t.open else { throw TestFailure("target \(t.path): mixed file and librbd targets") }
                return try open()
            }
            return
        }
        for t in targets {
            if direct, let f = try? FileVolumeWriter(path: t.path, name: t.path, flags: oDirect) {
                files.append(f)
            } else {
                direct = false
                files = try targets.map { try FileVolumeWriter(path: $0.path, name: $0.path) }
                break
            }
        }
    }

    var started: UInt64 { startedGen.load(ordering: .acquiring) }
    var completed: UInt64 { completedGen.load(ordering: .acquiring) }

    func start() {
        let t = Thread { [self] in run() }
        t.name = "snapshot-test-writer"
        t.start()
    }

    private func run() {
        defer { done.signal() }
        var rng = SplitMix64(seed: seed)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: BlockPattern.blockSize, alignment: 4096)
        defer { buf.deallocate() }
        var gen = base
        while !stopRequested.load(ordering: .relaxed) {
            gen += 1
            let ti = Int(rng.next() % UInt64(targets.count))
            let t = targets[ti]
            let block = t.blocks.lowerBound + Int(rng.next() % UInt64(t.blocks.count))
            BlockPattern.stamp(buf, tag: t.tag, block: block, gen: gen)
            log.append((ti, block))
            startedGen.store(gen, ordering: .releasing)
            do {
                try files[ti].write(UnsafeRawBufferPointer(buf), at: UInt64(block * BlockPattern.blockSize))
            } catch {
                self.error = error
                return
            }
            completedGen.store(gen, ordering: .releasing)
        }
    }

    /// Waits until at least `count` more writes have completed (or the writer failed).
    func waitForWrites(_ count: UInt64, timeout: Double = 30) throws {
        let goal = completed + count
        let deadline = Date().addingTimeInterval(timeout)
        while completed < goal {
            if Date() > deadline { throw TestFailure("writer made no progress: \(completed) of \(goal) writes after \(Int(timeout)) s") }
            usleep(1000)
        }
    }

    /// Stops and joins the writer; rethrows its error.
    func stop() throws {
        stopRequested.store(true, ordering: .relaxed)
        done.wait()
        for f in files { try? f.close() }
        files = []
        if let error { throw error }
    }

    /// The generation of the last write.
    var last: UInt64 { base + UInt64(log.count) }

    /// The content of every target after exactly the writes up to generation `prefix`,
    /// starting from `initial` (one state array per target).
    func state(afterPrefix prefix: UInt64, initial: [[BlockPattern.State]]) -> [[BlockPattern.State]] {
        var s = initial
        guard prefix > base else { return s }
        for i in 0..<Int(prefix - base) {
            let w = log[i]
            s[w.target][w.block] = .stamp(gen: base + UInt64(i + 1))
        }
        return s
    }

    struct SnapshotCheck {
        /// The prefix the snapshot holds.
        var prefix: UInt64
        var completedBefore: UInt64
        var startedAfter: UInt64
    }

    /// Checks that `found` (the snapshot, one state array per target) is the state after a
    /// prefix C of the write sequence with `completedBefore` ≤ C ≤ `startedAfter`.
    func verifySnapshot(_ found: [[BlockPattern.State]], initial: [[BlockPattern.State]],
                        completedBefore: UInt64, startedAfter: UInt64) throws -> SnapshotCheck {
        var highest: UInt64 = 0
        for (ti, blocks) in found.enumerated() {
            for (b, st) in blocks.enumerated() {
                switch st {
                case .invalid(let why):
                    throw TestFailure("snapshot of target \(ti) block \(b) is \(why): a torn or misplaced write")
                case .stamp(let g): highest = max(highest, g)
                case .zero, .fill: break
                }
            }
        }
        // The highest generation present must be the prefix: the write of
        // generation C is the newest of its block in state(C), so a snapshot of
        // prefix C shows C, and shows nothing newer.
        guard highest <= startedAfter else {
            throw TestFailure("snapshot holds generation \(highest), written after the snapshot returned (last started before: \(startedAfter))")
        }
        guard highest >= completedBefore else {
            throw TestFailure("snapshot misses writes that completed before it was taken: newest generation in it \(highest), completed before: \(completedBefore)")
        }
        let expected = state(afterPrefix: highest, initial: initial)
        for ti in found.indices {
            let diff = TestVolume.mismatches(found[ti], expected[ti])
            if !diff.isEmpty {
                throw TestFailure("snapshot of target \(ti) is not the state after the first \(highest) writes: " + diff.joined(separator: "; "))
            }
        }
        return SnapshotCheck(prefix: highest, completedBefore: completedBefore, startedAfter: startedAfter)
    }
}

/// <fcntl.h> defines O_DIRECT under _GNU_SOURCE only, which Swift does not import (x86-64 and arm64 value).
#if arch(arm64)
let oDirect: Int32 = 0o200000
#else
let oDirect: Int32 = 0o40000
#endif
