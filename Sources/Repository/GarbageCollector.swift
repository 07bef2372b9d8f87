import Foundation
import SnapdumpSystem
import Archive

/// `repo gc`, PBS's two phases:
/// 1. mark: every chunk referenced by an index of a finished snapshot gets
///    its atime set to now;
/// 2. sweep: chunks whose atime is older than the cutoff are removed.
///
/// The cutoff is gc start − 24 h 5 min (PBS's default; `atimeCutoff`), and
/// never later than the oldest running writer's start − 5 min: a chunk a
/// running backup wrote or found (it touches those) is newer than that.
/// Unreferenced chunks newer than the cutoff are "pending".
public struct GarbageCollector: Sendable {
    public let repository: Repository
    /// Seconds before gc start that an unreferenced chunk must be older than.
    public var atimeCutoff: Int64

    public static let defaultCutoff: Int64 = 24 * 3600 + 5 * 60

    public init(repository: Repository, atimeCutoff: Int64 = defaultCutoff) {
        self.repository = repository
        self.atimeCutoff = atimeCutoff
    }

    public struct Result: Sendable, Codable {
        public var started: Int64
        public var minAtime: Int64
        public var indexes = 0
        public var referencedChunks = 0
        public var missingChunks: [String] = []
        public var removedChunks = 0, removedBytes: UInt64 = 0
        public var pendingChunks = 0, pendingBytes: UInt64 = 0
        public var keptChunks = 0, keptBytes: UInt64 = 0
        public var removedBad = 0, removedTemp = 0
        public var staleWriters = 0
    }

    public func run(log: (String) -> Void = { _ in }) throws -> Result {
        let lock = try RepositoryLocks.gc(root: repository.root)
        defer { lock.unlock() }
        let start = Int64(Date().timeIntervalSince1970)
        let writers = RepositoryLocks.runningWriters(root: repository.root)
        for w in writers.staleRemoved {
            log("removed stale writer registration of pid \(w.pid) (started \(SnapshotName.formatTime(w.started)), process is gone)")
        }
        var minAtime = start - atimeCutoff
        if let oldest = writers.running.map(\.started).min(), oldest - 300 < minAtime {
            minAtime = oldest - 300
            log("oldest running writer started \(SnapshotName.formatTime(oldest)): cutoff moved before it")
        }
        var r = Result(started: start, minAtime: minAtime)
        r.staleWriters = writers.staleRemoved.count

        // Phase 1: mark. Snapshots are listed again after marking, until no
        // new one appeared, so a backup finishing meanwhile is marked too.
        var marked = Set<SHA256Digest>()
        var done = Set<SnapshotName>()
        while true {
            let snaps = try repository.snapshots().filter { !done.contains($0) }
            if snaps.isEmpty { break }
            for s in snaps {
                done.insert(s)
                let dir = repository.directory(of: s)
                for f in (try? FileSystem.list(dir)) ?? [] where f.hasSuffix(".fidx") {
                    let idx: FixedIndex
                    do { idx = try FixedIndex.read(dir + "/" + f) } catch {
                        // A corrupt index must not make gc remove what it references:
                        // stop before the sweep.
                        throw RepositoryError(.corrupt, "snapshot \(s) index \(f)", "cannot be read, gc stopped before removing anything (\(error))")
                    }
                    r.indexes += 1
                    for d in idx.digests where marked.insert(d).inserted {
                        if !repository.chunks.touch(d) { r.missingChunks.append(d.hex) }
                    }
                }
            }
        }
        r.referencedChunks = marked.count
        log("marked \(marked.count) chunks referenced by \(r.indexes) indexes of \(done.count) snapshots")

        // Phase 2: sweep.
        let s = try repository.chunks.sweep(minAtime: minAtime) { marked.contains($0) }
        r.removedChunks = s.removedChunks; r.removedBytes = s.removedBytes
        r.pendingChunks = s.pendingChunks; r.pendingBytes = s.pendingBytes
        r.keptChunks = s.keptChunks; r.keptBytes = s.keptBytes
        r.removedBad = s.removedBad; r.removedTemp = s.removedTemp
        if let json = try? JSONEncoder().encode(r) {
            try? FileSystem.writeAtomically(repository.gcStatusPath, bytes: Array(json), mode: 0o600)
        }
        return r
    }
}

/// `repo status`: what the repository holds.
public struct RepositoryStatus: Sendable {
    public var snapshots = 0
    public var guests = 0
    public var chunks = 0
    /// Bytes of the chunk files.
    public var storedBytes: UInt64 = 0
    /// Bytes of the disks of all snapshots, as if each were a full copy.
    public var logicalBytes: UInt64 = 0
    public var dedupFactor: Double { storedBytes == 0 ? 0 : Double(logicalBytes) / Double(storedBytes) }

    public init(repository: Repository) throws {
        let snaps = try repository.snapshots()
        snapshots = snaps.count
        guests = Set(snaps.map(\.group)).count
        for s in snaps {
            let m = try repository.manifest(s)
            logicalBytes += m.files.filter { $0.filename.hasSuffix(".fidx") }.reduce(0) { $0 + $1.size }
        }
        for (_, size) in try repository.chunks.allChunks() {
            chunks += 1
            storedBytes += size
        }
    }
}
