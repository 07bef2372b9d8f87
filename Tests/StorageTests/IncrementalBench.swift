import Foundation
import Repository
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// The incremental-forever benchmark (issue 11), driven by
/// scripts/bench/incremental-bench.sh, which sets SNAPDUMP_BENCH_IMAGE (a
/// real-disk.sh image), SNAPDUMP_BENCH_CHANGE ("PCT SEED MODE"), the
/// filesystems SNAPDUMP_BENCH_BTRFS / SNAPDUMP_BENCH_XFS and SNAPDUMP_BENCH_OUT.
/// Per storage: the image copied into a volume, base snapshot, full backup;
/// real-disk.sh changes the volume in place; new snapshot; then the
/// incremental backup (change tracking + changed chunks only) and, for
/// comparison, a full re-read of the same snapshot (what the repository does
/// without tracking). Both indexes must be equal. Not run without the variables.
@Suite("Incremental bench", .serialized)
struct IncrementalBench {
    static let env = ProcessInfo.processInfo.environment

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var variable: String
        var type: StorageType
        var reflink: Bool
        var testDescription: String { name }
    }

    static let cases = [
        Case(name: "btrfs (btrfs send)", variable: "SNAPDUMP_BENCH_BTRFS", type: .btrfs, reflink: false),
        Case(name: "dir reflink on XFS (FIEMAP)", variable: "SNAPDUMP_BENCH_XFS", type: .dir, reflink: true),
        Case(name: "zfspool on zfs-fuse (zfs send)", variable: "SNAPDUMP_BENCH_ZPOOL", type: .zfspool, reflink: false),
    ]

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }

    /// Runs `body`, returns its result with wall and CPU seconds.
    static func timed<T>(_ body: () throws -> T) rethrows -> (T, wall: Double, cpu: Double) {
        let w0 = Date(), c0 = cpuSeconds()
        let r = try body()
        return (r, Date().timeIntervalSince(w0), cpuSeconds() - c0)
    }

    @Test(arguments: cases)
    func incrementalVersusFullRead(_ c: Case) throws {
        guard let image = Self.env["SNAPDUMP_BENCH_IMAGE"], let target = Self.env[c.variable],
              let out = Self.env["SNAPDUMP_BENCH_OUT"], let work = Self.env["SNAPDUMP_BENCH_WORK"] else { return }
        let change = (Self.env["SNAPDUMP_BENCH_CHANGE"] ?? "1 11 extents").split(separator: " ").map(String.init)
        let storage = c.type == .zfspool ? try ScratchStorage(type: .zfspool, zpool: target)
            : try ScratchStorage(type: c.type, fixtureDir: target, reflink: c.reflink)
        defer { storage.destroy() }
        let p = storage.plugin
        let repoRoot = work + "/repo-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: repoRoot) }
        let repo = try Repository.create(root: repoRoot)
        let size = try File.openForReading(image).size()
        let volume = try p.allocate(vmid: 100, size: size, format: .raw)
        let path = try p.path(of: volume).path
        // zfs-fuse: a plain copy (its files have no holes to keep).
        try Command.run(["cp", "--sparse=" + (c.type == .zfspool ? "never" : "always"), image, path])
        try Command.run(["sync", "-f", path])

        func backup(_ time: Int64, snapshot: String, previous: FixedIndex?, changed: IndexSet?) throws -> BackupWriter.DiskUpload {
            let w = try BackupWriter(repository: repo, snapshot: SnapshotName(type: "vm", id: "100", time: time))
            let src = try p.openBlockSource(volume, snapshot: snapshot)
            defer { try? src.close() }
            let read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { off, buf in
                guard try src.read(at: off, into: buf) == buf.count else { throw TestFailure("short read at \(off)") }
            }
            let up: BackupWriter.DiskUpload
            if let previous, let changed {
                up = try w.addDisk(name: "drive-scsi0.img", size: src.size, previous: previous, changed: changed, read: read)
            } else {
                let idx = try w.addDisk(name: "drive-scsi0.img", size: src.size, read: read)
                up = .init(index: idx, chunksRead: idx.chunkCount, chunksReused: 0, bytesRead: src.size)
            }
            w.recordBase(name: "drive-scsi0.img", volume: volume.description, snapshot: snapshot)
            _ = try w.finish()
            return up
        }

        let t0: Int64 = 1_800_000_000
        let base = BaseSnapshot.name(backupTime: t0)
        try p.createSnapshot([volume], name: base)
        let (first, fullWall, fullCPU) = try Self.timed { try backup(t0, snapshot: base, previous: nil, changed: nil) }
        let script = SourceTree.root + "/scripts/bench/real-disk.sh"
        let changedBytes = try Command.run([script, "change", path] + change).trimmingCharacters(in: .whitespacesAndNewlines)
        try Command.run(["sync", "-f", path])
        let new = BaseSnapshot.name(backupTime: t0 + 86400)
        try p.createSnapshot([volume], name: new)
        let ((tracking, incr), incrWall, incrCPU) = try Self.timed { () throws -> (ChangedChunks, BackupWriter.DiskUpload) in
            guard let t = try p.changedChunks(volume, base: base, snapshot: new, chunkSize: FixedIndex.defaultChunkSize).changedChunks else {
                throw TestFailure("no change tracking on \(c.name)")
            }
            return (t, try backup(t0 + 86400, snapshot: new, previous: first.index, changed: t.indices))
        }
        let (reread, rereadWall, rereadCPU) = try Self.timed { try backup(t0 + 2 * 86400, snapshot: new, previous: nil, changed: nil) }
        #expect(reread.index.digests == incr.index.digests, "the incremental index equals a full read's")
        let differ = zip(first.index.digests, reread.index.digests).filter { $0 != $1 }.count
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first ?? "?"
        let line = String(format: "| %@ | %.1f s (%.1f s CPU) | %@ B changed | %d of %d chunks read (%.1f %%, %d differ) | %.2f s (%.2f s CPU) | %.1f s (%.1f s CPU) | %@ |",
                          c.name, fullWall, fullCPU, changedBytes, incr.chunksRead, tracking.chunkCount,
                          100 * Double(incr.bytesRead) / Double(size), differ, incrWall, incrCPU, rereadWall, rereadCPU, String(load))
        print(line)
        let f = try File.open(out, O_WRONLY | O_CREAT | O_APPEND)
        try f.writeAll(Array((line + "\n").utf8))
        for s in [base, new] { try p.deleteSnapshot([volume], name: s) }
        try p.free(volume)
    }
}
