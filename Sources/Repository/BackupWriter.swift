#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SnapdumpSystem
import Archive

/// One backup into a repository: a snapshot directory filled with fixed
/// indexes and blobs, then the manifest, written last (`finish`). Until
/// then the snapshot does not exist; `abort` (or a killed process) leaves a
/// directory without manifest, which the next backup of the guest removes
/// and whose chunks the next gc removes after the cutoff.
///
/// Holds the repository's writer lock (gc never removes chunks newer than
/// this writer's start) and the guest's lock (one backup per guest).
public final class BackupWriter: @unchecked Sendable {
    // @unchecked: mutable state (files, stats) is behind `state`; the rest is immutable.
    public let repository: Repository
    public let snapshot: SnapshotName
    public let directory: String
    private let writerLock: RepositoryLocks.WriterLock
    private let groupLock: FileLock
    private let zeroDigest: SHA256Digest
    private let zeroStored = Atomic<Bool>(false)

    private struct State {
        var files: [Manifest.FileInfo] = []
        var bases: [Manifest.BaseSnapshotRecord] = []
        /// Index files whose hash states (`ChunkMidstates`) this backup wrote.
        var midstateFiles: [String] = []
        var stats = Manifest.ChunkUploadStats(count: 0, size: 0, compressedSize: 0, duplicates: 0)
        var done = false
    }
    private let state = Mutex(State())

    /// Starts a backup of `snapshot`. Removes the guest's unfinished
    /// snapshot directories first (left by killed runs: we hold the guest's
    /// lock, so no other backup of it is running). `removed` reports them.
    public init(repository: Repository, snapshot: SnapshotName, lockTimeout: Double = 0,
                removed: (String) -> Void = { _ in }) throws {
        self.repository = repository
        self.snapshot = snapshot
        directory = repository.directory(of: snapshot)
        writerLock = try RepositoryLocks.writer(root: repository.root)
        do {
            try FileSystem.createDirectory("\(repository.root)/\(snapshot.type)", mode: 0o700)
            try FileSystem.createDirectory("\(repository.root)/\(snapshot.group)", mode: 0o700)
        } catch { throw RepositoryError.io(repository.root, "cannot create the guest's directory", error) }
        groupLock = try RepositoryLocks.group(root: repository.root, group: snapshot.group, timeout: lockTimeout)
        for old in repository.unfinishedSnapshots(type: snapshot.type, id: snapshot.id) {
            try? repository.removeDirectory(repository.directory(of: old))
            removed(old.path)
        }
        if FileSystem.exists(directory) {
            throw RepositoryError(.exists, "snapshot \(snapshot)", "exists already in \(repository.root)")
        }
        if mkdir(directory, 0o700) != 0 { throw RepositoryError.io(directory, "cannot create snapshot directory", SystemError("mkdir", directory)) }
        // Initialised last on purpose: deinit (which removes `directory`) runs
        // only for a fully initialised writer, never for one that found the
        // snapshot existing.
        // The zero chunk is built only for a keyed digest: 4 MiB zero-filled is
        // a memset and 1024 page faults, serial, in every unencrypted backup's start.
        zeroDigest = repository.crypt.map { c in
            [UInt8](repeating: 0, count: Int(FixedIndex.defaultChunkSize)).withUnsafeBytes { c.digest($0) }
        } ?? DeviceDigest.zeroChunkDigest
    }

    deinit {
        let finished = state.withLock { $0.done }
        if !finished { abort() }
    }

    public var cryptMode: Manifest.CryptMode { repository.crypt == nil ? .none : .encrypt }

    /// Statistics of the chunks written so far.
    public var stats: Manifest.ChunkUploadStats { state.withLock { $0.stats } }

    /// The digest a chunk is stored under (keyed when encrypted).
    public func digest(of chunk: UnsafeRawBufferPointer) -> SHA256Digest {
        if chunk.count == Int(FixedIndex.defaultChunkSize) && isAllZero(chunk) { return zeroDigest }
        if let c = repository.crypt { return c.digest(chunk) }
        return SHA256.digest(chunk)
    }

    /// Stores one chunk unless the repository has it; returns its digest.
    /// Thread-safe: disks are uploaded from several threads.
    public func store(chunk: UnsafeRawBufferPointer) throws -> SHA256Digest {
        try store(chunk: chunk, writes: nil)
    }

    /// `writes`: the calling thread's encoders, reused for every chunk it stores (unencrypted
    /// repositories); a new blob is then written behind, and the chunk is stored once
    /// `writes.drain()` returned. `previous`: the frames of the blob `chunk` was patched from,
    /// copied where `changed(frame)` is false. `digest`: the chunk's, when the caller has it
    /// already (then whether it is the zero chunk is told by it, not by a scan of `chunk`).
    /// `materialize`: fills in the frames of `chunk` that were left out because they are
    /// copied, when the blob must be stored uncompressed after all.
    func store(chunk: UnsafeRawBufferPointer, writes: ChunkWriteBehind?,
               previous: DataBlob.Frames? = nil, changed: (Int) -> Bool = { _ in true },
               digest: SHA256Digest? = nil, materialize: (() throws -> Void)? = nil) throws -> SHA256Digest {
        let full = chunk.count == Int(FixedIndex.defaultChunkSize)
        let isZero = full && (digest.map { $0 == zeroDigest } ?? isAllZero(chunk))
        let d = isZero ? zeroDigest : (digest ?? repository.crypt.map { $0.digest(chunk) } ?? SHA256.digest(chunk))
        if isZero && zeroStored.load(ordering: .relaxed) { countDuplicate(); return d }
        if repository.chunks.storedSize(d) != nil {
            repository.chunks.touch(d)
            if isZero { zeroStored.store(true, ordering: .relaxed) }
            countDuplicate()
            return d
        }
        if let writes, repository.crypt == nil {
            let encoder = try writes.encoder()
            var blob = encoder.encode(chunk, reusing: previous, changed: changed, plainAllowed: materialize == nil)
            if blob == nil {
                try materialize?()
                blob = encoder.encode(chunk, reusing: previous, changed: changed)
            }
            let chunks = repository.chunks, length = chunk.count
            writes.submit(blob!) { [self] b in
                counted(try chunks.insert(d, blob: b), length: length, isZero: isZero)
            }
        } else {
            counted(try repository.chunks.insert(d, blob: try DataBlob.encode(chunk, compress: true, crypt: repository.crypt)),
                    length: chunk.count, isZero: isZero)
        }
        return d
    }

    private func counted(_ inserted: ChunkStore.InsertResult, length: Int, isZero: Bool) {
        switch inserted {
        case .stored(let n):
            state.withLock { s in
                s.stats.count += 1
                s.stats.size += UInt64(length)
                s.stats.compressedSize += n
            }
        case .duplicate:
            countDuplicate()
        }
        if isZero { zeroStored.store(true, ordering: .relaxed) }
    }

    private func countDuplicate() { state.withLock { $0.stats.duplicates += 1 } }

    /// Reads a disk of `size` bytes in 4 MiB chunks with `read(offset, buffer)`
    /// (must fill the buffer, thread-safe) on `threads` threads, stores every
    /// unknown chunk and writes `<name>.fidx`. `knownZero(offset, length)` says
    /// a range reads as zeros without reading it (holes). `progress` gets the
    /// bytes done so far. Memory: two chunk buffers per thread.
    @discardableResult
    public func addDisk(name: String, size: UInt64, threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                        read: @escaping @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void,
                        knownZero: (@Sendable (UInt64, Int) -> Bool)? = nil,
                        progress: (@Sendable (UInt64) -> Void)? = nil) throws -> FixedIndex {
        try upload(name: name, size: size, threads: threads, reuse: nil, read: read, knownZero: knownZero, progress: progress).index
    }

    /// What an incremental `addDisk` did: chunks read (and hashed) vs digests
    /// taken from the previous backup's index.
    public struct DiskUpload: Sendable {
        public var index: FixedIndex
        /// Chunks of which any byte was asked of `read` (whole or only their changed ranges).
        public var chunksRead: Int
        public var chunksReused: Int
        /// Bytes asked of `read` (what `knownZero` answered is not counted).
        public var bytesRead: UInt64
        /// Of `chunksRead`: chunks built from the previous backup's chunk with only the changed ranges read.
        public var chunksPatched: Int
        /// Of `chunksPatched`: chunks whose hash resumed at their first changed frame (`ChunkMidstates`),
        /// the frames before it neither decompressed nor hashed, of the previous chunk only the frames kept.
        public var chunksResumed: Int
        /// Chunks read whole because their previous chunk could not be read back (missing, corrupt); the first reason.
        public var previousUnreadable: Int
        public var previousUnreadableReason: String?

        public init(index: FixedIndex, chunksRead: Int, chunksReused: Int, bytesRead: UInt64,
                    chunksPatched: Int = 0, chunksResumed: Int = 0, previousUnreadable: Int = 0, previousUnreadableReason: String? = nil) {
            self.chunksResumed = chunksResumed
            self.index = index
            self.chunksRead = chunksRead
            self.chunksReused = chunksReused
            self.bytesRead = bytesRead
            self.chunksPatched = chunksPatched
            self.previousUnreadable = previousUnreadable
            self.previousUnreadableReason = previousUnreadableReason
        }
    }

    /// A changed chunk is patched (previous chunk + changed ranges) only while
    /// the ranges to read stay under this share of it; above, reading it whole
    /// costs about the same and needs no previous chunk.
    static let patchLimit = 3.0 / 4.0

    /// An incremental backup of a disk: reads and hashes only the chunks in
    /// `changed` (the storage's answer since the base snapshot that `previous`
    /// was read from) and takes every other digest from `previous`, then
    /// writes a complete index, as a full backup would. A chunk is read anyway
    /// when `previous` has no chunk of the same length at its place (the disk
    /// grew or shrank) or when the repository no longer holds its chunk;
    /// reused chunks are touched, so a gc running now keeps them.
    ///
    /// `changedRanges(i)`, when given, lists the byte ranges of the disk
    /// inside changed chunk `i` that may differ (sorted, disjoint): the chunk
    /// is then built from the previous backup's chunk (fetched, decrypted,
    /// decompressed and digest-checked as a restore does, from
    /// `previousSnapshot`) with only those ranges read over it (`knownZero`
    /// ranges zero-filled unread). It is read whole instead when the ranges
    /// cover most of it, when its length changed, or when its previous chunk
    /// cannot be read back (counted in `previousUnreadable`). A changed chunk
    /// that was the zero chunk and whose every changed range is `knownZero`
    /// is still the zero chunk: taken from `previous` (counted as reused).
    public func addDisk(name: String, size: UInt64, previous: FixedIndex, changed: IndexSet,
                        changedRanges: (@Sendable (Int) -> [Range<UInt64>])? = nil,
                        previousSnapshot: SnapshotName? = nil,
                        threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                        read: @escaping @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void,
                        knownZero: (@Sendable (UInt64, Int) -> Bool)? = nil,
                        progress: (@Sendable (UInt64) -> Void)? = nil) throws -> DiskUpload {
        guard previous.chunkSize == FixedIndex.defaultChunkSize else {
            throw RepositoryError(.invalidArgument, "previous index of \(name)", "has chunk size \(previous.chunkSize), not \(FixedIndex.defaultChunkSize)")
        }
        let chunks = repository.chunks
        let zeroDigest = self.zeroDigest
        let reuse: @Sendable (Int, Int) -> SHA256Digest? = { i, length in
            guard i < previous.chunkCount, previous.chunkLength(i) == length else { return nil }
            let d = previous.digests[i]
            if changed.contains(i) {
                // Still the zero chunk: it was one, and every change the storage reports in it reads
                // as zeros. zfs-fuse (no hole birth times) sends a FREE record for every hole at
                // each incremental send, old holes too; patching them cost a chunk of zeros written and scanned.
                guard d == zeroDigest, length == Int(FixedIndex.defaultChunkSize), let knownZero,
                      let ranges = changedRanges?(i), !ranges.isEmpty,
                      ranges.allSatisfy({ knownZero($0.lowerBound, $0.count) }) else { return nil }
            }
            // Touching is the existence check too: a chunk gone from the store (removed by hand) is read again.
            return chunks.touch(d) ? d : nil
        }
        let patch = changedRanges.map { ranges in
            // The chunks likely patched: changed, with a previous chunk that is not the zero chunk
            // (never read) and ranges that do not send it to a whole read.
            let patched = changed.compactMap { i -> (index: Int, digest: SHA256Digest)? in
                guard i < previous.chunkCount, previous.digests[i] != zeroDigest else { return nil }
                let length = previous.chunkLength(i)
                let toRead = Self.clip(ranges(i), chunk: UInt64(i) * previous.chunkSize, length: length).reduce(0) { $0 + $1.count }
                return Self.isPatchable(toRead: UInt64(toRead), length: length) ? (i, previous.digests[i]) : nil
            }
            return Patch(previous: previous, ranges: ranges, reader: ChunkReader(repository: repository, snapshot: previousSnapshot ?? snapshot),
                         prefetch: ChunkPrefetch(store: chunks, chunks: patched))
        }
        let fileName = name.hasSuffix(".fidx") ? name : name + ".fidx"
        // The previous index's hash states: patched chunks resume there, unchanged chunks keep theirs.
        let midstates = repository.crypt != nil ? nil : previousSnapshot.flatMap {
            ChunkMidstates.load(path: ChunkMidstates.path(directory: repository.directory(of: $0), fileName: fileName), index: previous)
        }
        return try upload(name: name, size: size, threads: threads, reuse: reuse, patch: patch, previousMidstates: midstates,
                          read: read, knownZero: knownZero, progress: progress)
    }

    /// How to build a changed chunk from its previous version (`addDisk(previous:changed:changedRanges:)`).
    private struct Patch: Sendable {
        let previous: FixedIndex
        let ranges: @Sendable (Int) -> [Range<UInt64>]
        let reader: ChunkReader
        let prefetch: ChunkPrefetch
    }

    /// A changed chunk as built from its previous version, before it is stored.
    private struct Patched {
        var frames: DataBlob.Frames?
        var changedFrames: [Bool]
        /// Unencrypted: the new chunk's digest and hash states, computed along the way.
        var digest: SHA256Digest?
        var states = ChunkMidstates.Entry()
        /// Frames before this one were not decoded (copied compressed; `materialize` fills them in).
        var missingFrames = 0
        /// Built from the previous chunk's hash states (`ChunkMidstates`), not from the whole previous chunk.
        var resumed = false
    }

    private func upload(name: String, size: UInt64, threads: Int,
                        reuse: (@Sendable (Int, Int) -> SHA256Digest?)?, patch: Patch? = nil,
                        previousMidstates: ChunkMidstates? = nil,
                        read: @escaping @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void,
                        knownZero: (@Sendable (UInt64, Int) -> Bool)?,
                        progress: (@Sendable (UInt64) -> Void)?) throws -> DiskUpload {
        let fileName = name.hasSuffix(".fidx") ? name : name + ".fidx"
        let chunkSize = FixedIndex.defaultChunkSize
        let count = FixedIndex.chunkCount(size: size, chunkSize: chunkSize)
        let digests = Mutex([SHA256Digest](repeating: SHA256Digest(), count: count))
        // Unencrypted only: an encrypted repository's digest is keyed (CryptConfig.digest), hashed whole.
        let hashing = repository.crypt == nil
        let midstates = Mutex(ChunkMidstates(count: hashing ? count : 0))
        let next = Atomic<Int>(0)
        let done = Atomic<UInt64>(0)
        let chunksRead = Atomic<Int>(0)
        let bytesRead = Atomic<UInt64>(0)
        let chunksReused = Atomic<Int>(0)
        let chunksPatched = Atomic<Int>(0)
        let chunksResumed = Atomic<Int>(0)
        let unreadable = Mutex((count: 0, reason: String?.none))
        let failure = Mutex<(any Error)?>(nil)
        let workers = max(1, min(threads, count))
        let zeroDigest = self.zeroDigest
        patch?.prefetch.start()
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            let memory = ChunkMemory(byteCount: Int(chunkSize))
            let buffer = memory.bytes
            defer { withExtendedLifetime(memory) {} }
            let writes = repository.crypt == nil ? ChunkWriteBehind(capacity: Int(chunkSize)) : nil
            // One per thread, reused: a fresh decoder and array per patched chunk were 3 × 4 MiB of
            // zero-filled pages each (a tenth of an incremental run's CPU in page faults).
            let decoder = patch == nil ? nil : ChunkDecoder(capacity: Int(chunkSize))
            while failure.withLock({ $0 == nil }) {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < count else { break }
                let offset = UInt64(i) * chunkSize
                let len = Int(min(chunkSize, size - offset))
                do {
                    let d: SHA256Digest
                    if let reuse, let r = reuse(i, len) {
                        d = r
                        chunksReused.add(1, ordering: .relaxed)
                        if hashing, let previousMidstates {
                            let states = previousMidstates[chunk: i]
                            if !states.isEmpty { midstates.withLock { $0[chunk: i] = states } }
                        }
                    } else if len == Int(chunkSize), let knownZero, knownZero(offset, len), zeroStored.load(ordering: .relaxed) {
                        d = zeroDigest
                        countDuplicate()
                    } else {
                        let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<len])
                        patch?.prefetch.reached(i)
                        var built: Patched?
                        if let patch, let decoder, let ranges = patchable(patch, chunk: i, offset: offset, length: len, knownZero: knownZero) {
                            built = try patchChunk(patch, i, ranges: ranges, into: chunk, decoder: decoder, hashing: hashing,
                                                   states: previousMidstates?[chunk: i], read: read, knownZero: knownZero,
                                                   unreadable: unreadable, asked: { asked in
                                                       if asked > 0 {
                                                           chunksRead.add(1, ordering: .relaxed)
                                                           bytesRead.add(asked, ordering: .relaxed)
                                                       }
                                                   })
                            if let built {
                                chunksPatched.add(1, ordering: .relaxed)
                                if built.resumed { chunksResumed.add(1, ordering: .relaxed) }
                            }
                        }
                        if built == nil {
                            if len == Int(chunkSize), let knownZero, knownZero(offset, len) {
                                chunk.initializeMemory(as: UInt8.self, repeating: 0)
                            } else {
                                try read(offset, chunk)
                                chunksRead.add(1, ordering: .relaxed)
                                bytesRead.add(UInt64(len), ordering: .relaxed)
                            }
                        }
                        var states = built?.states ?? ChunkMidstates.Entry()
                        var digest = built?.digest
                        if hashing && digest == nil {
                            let whole = UnsafeRawBufferPointer(chunk)
                            if len == Int(chunkSize) && isAllZero(whole) {
                                digest = zeroDigest
                            } else {
                                digest = Self.digest(continuing: SHA256Hasher(), whole, noting: &states)
                            }
                        }
                        let frames = built?.frames, changedFrames = built?.changedFrames ?? []
                        let missing = built?.missingFrames ?? 0
                        d = try store(chunk: UnsafeRawBufferPointer(chunk), writes: writes, previous: frames,
                                      changed: { changedFrames.isEmpty || changedFrames[$0] }, digest: digest,
                                      materialize: missing == 0 ? nil : {
                                          // The frames copied undecoded, decoded after all: this blob goes out uncompressed.
                                          try decoder!.decompress(frames!, 0..<missing, into: chunk, length: len,
                                                                  object: "chunk \(patch!.previous.digests[i].hex) of snapshot \(patch!.reader.snapshot)")
                                      })
                        if hashing && !states.isEmpty { midstates.withLock { $0[chunk: i] = states } }
                    }
                    digests.withLock { $0[i] = d }
                    let total = done.add(UInt64(len), ordering: .relaxed).newValue
                    progress?(total)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
            // Always, also after a failure: the queued writes use this thread's encoders.
            do { try writes?.drain() } catch { failure.withLock { if $0 == nil { $0 = error } } }
        }
        if let e = failure.withLock({ $0 }) { throw e }
        var uuid = try Random.bytes(16)
        uuid[6] = (uuid[6] & 0x0F) | 0x40
        uuid[8] = (uuid[8] & 0x3F) | 0x80
        let index = FixedIndex(uuid: uuid, ctime: Int64(Date().timeIntervalSince1970), size: size,
                               chunkSize: chunkSize, digests: digests.withLock { $0 })
        try index.write(to: directory + "/" + fileName)
        if hashing {
            // A cache: a backup without it is whole, the next one only slower.
            let path = ChunkMidstates.path(directory: directory, fileName: fileName)
            do { try midstates.withLock { try $0.write(to: path, index: index) } } catch { unlink(path) }
            state.withLock { $0.midstateFiles.append(fileName) }
        }
        state.withLock { $0.files.append(Manifest.FileInfo(filename: fileName, cryptMode: cryptMode, size: size, csum: index.indexChecksum.hex)) }
        let u = unreadable.withLock { $0 }
        return DiskUpload(index: index, chunksRead: chunksRead.load(ordering: .relaxed),
                          chunksReused: chunksReused.load(ordering: .relaxed), bytesRead: bytesRead.load(ordering: .relaxed),
                          chunksPatched: chunksPatched.load(ordering: .relaxed), chunksResumed: chunksResumed.load(ordering: .relaxed),
                          previousUnreadable: u.count, previousUnreadableReason: u.reason)
    }

    /// The digest of `chunk`, `hasher` having hashed its first `hasher.length` bytes; the states at the frame boundaries after them noted.
    private static func digest(continuing hasher: SHA256Hasher, _ chunk: UnsafeRawBufferPointer,
                               noting states: inout ChunkMidstates.Entry) -> SHA256Digest {
        var h = hasher
        hashFrames(&h, chunk, to: chunk.count, noting: &states)
        return h.finish()
    }

    /// Hashes `chunk[hasher.length..<end]` into `hasher`, noting its state at every frame boundary reached.
    private static func hashFrames(_ hasher: inout SHA256Hasher, _ chunk: UnsafeRawBufferPointer, to end: Int,
                                   noting states: inout ChunkMidstates.Entry) {
        while hasher.length < end {
            let boundary = (hasher.length / DataBlob.frameSize + 1) * DataBlob.frameSize
            let stop = min(boundary, end)
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[hasher.length..<stop]))
            if stop == boundary { states[after: boundary / DataBlob.frameSize] = hasher.state }
        }
    }

    /// The ranges of changed chunk `i` to lay over its previous version, or nil
    /// when it is better read whole: no previous chunk of the same length, or
    /// ranges to read covering most of it.
    private func patchable(_ patch: Patch, chunk i: Int, offset: UInt64, length: Int,
                           knownZero: (@Sendable (UInt64, Int) -> Bool)?) -> [Range<UInt64>]? {
        guard i < patch.previous.chunkCount, patch.previous.chunkLength(i) == length else { return nil }
        let ranges = Self.clip(patch.ranges(i), chunk: offset, length: length)
        var toRead: UInt64 = 0
        for r in ranges where !(knownZero?(r.lowerBound, r.count) ?? false) { toRead += UInt64(r.count) }
        return Self.isPatchable(toRead: toRead, length: length) ? ranges : nil
    }

    /// `ranges` cut to the chunk at `offset`, empty ones dropped.
    private static func clip(_ ranges: [Range<UInt64>], chunk offset: UInt64, length: Int) -> [Range<UInt64>] {
        let end = offset + UInt64(length)
        return ranges.map { max($0.lowerBound, offset)..<min($0.upperBound, end) }.filter { !$0.isEmpty }
    }

    private static func isPatchable(toRead: UInt64, length: Int) -> Bool { Double(toRead) <= patchLimit * Double(length) }

    /// Builds changed chunk `i` in `chunk` from the previous backup's chunk
    /// and its changed `ranges` (read, or zero-filled where `knownZero`),
    /// the previous chunk checked against its digest before any byte of it is
    /// used; nil, counted in `unreadable`, when it cannot be read back (the
    /// caller reads the chunk whole; no range was read yet). `asked` gets the
    /// bytes read. Unencrypted (`hashing`), the new digest and hash states come
    /// with it.
    ///
    /// With the previous chunk's hash `states`, the frames before the first
    /// changed one are neither decompressed nor hashed: the new chunk's hash
    /// resumes at that frame's boundary, and of the previous chunk only the
    /// frames whose bytes the new one keeps from the first changed frame on are
    /// decoded, their digest finished from the state at the first of them and
    /// checked. Without states (or when that check fails, which the whole
    /// chunk's check then explains), the whole previous chunk is decoded and
    /// checked, the bytes before the first change hashed once for both digests.
    private func patchChunk(_ patch: Patch, _ i: Int, ranges: [Range<UInt64>], into chunk: UnsafeMutableRawBufferPointer,
                            decoder: ChunkDecoder, hashing: Bool, states previous: ChunkMidstates.Entry?,
                            read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void,
                            knownZero: (@Sendable (UInt64, Int) -> Bool)?,
                            unreadable: borrowing Mutex<(count: Int, reason: String?)>,
                            asked: (UInt64) -> Void) throws -> Patched? {
        let offset = UInt64(i) * FixedIndex.defaultChunkSize
        let len = chunk.count
        let frameSize = DataBlob.frameSize
        let frameCount = (len + frameSize - 1) / frameSize
        var built = Patched(changedFrames: [Bool](repeating: false, count: frameCount))
        var covered = [Int](repeating: 0, count: frameCount)
        for r in ranges {
            let lo = Int(r.lowerBound - offset), hi = Int(r.upperBound - offset)
            for k in lo / frameSize...(hi - 1) / frameSize {
                built.changedFrames[k] = true
                covered[k] += min(hi, (k + 1) * frameSize) - max(lo, k * frameSize)
            }
        }
        let d = patch.previous.digests[i]
        let isZero = d == zeroDigest && len == Int(FixedIndex.defaultChunkSize)
        let first = built.changedFrames.firstIndex(of: true) ?? frameCount
        // The first frame from `first` on whose previous bytes the new chunk keeps (not rewritten whole).
        let kept = (first..<frameCount).first { covered[$0] < min(frameSize, len - $0 * frameSize) } ?? frameCount
        // Unencrypted: the new chunk's hash up to its first changed byte or frame, finished once the ranges are in.
        var start: SHA256Hasher?
        if hashing, !isZero, first < frameCount, first > 0 || kept > 0, let previous, let atFirst = previous[after: first],
           let atKept = kept < frameCount ? previous[after: kept] : SHA256State.initial {
            do {
                if let frames = try decoder.decodeFrames(d, expectedLength: len, from: patch.reader, into: chunk, decoding: kept..<frameCount) {
                    var check = SHA256Hasher(resuming: atKept, at: kept * frameSize)
                    check.update(UnsafeRawBufferPointer(rebasing: chunk[(kept * frameSize)...]))
                    if kept == frameCount || check.finish() == d {
                        built.frames = frames
                        built.missingFrames = first
                        for j in stride(from: 1, through: first, by: 1) { built.states[after: j] = previous[after: j] }
                        start = SHA256Hasher(resuming: atFirst, at: first * frameSize)
                        built.resumed = true
                    }
                }
            } catch {
                // The whole-chunk path below reads it again and says why it cannot be used.
            }
        }
        if !built.resumed {
            guard previousChunk(patch, i, into: chunk, decoder: decoder, frames: &built.frames, hashing: hashing,
                                prefix: &start, states: &built.states, commonPrefix: first == frameCount ? len : Int(ranges.map(\.lowerBound).min()! - offset),
                                unreadable: unreadable) else { return nil }
        }
        var bytes: UInt64 = 0
        for r in ranges {
            let piece = UnsafeMutableRawBufferPointer(rebasing: chunk[Int(r.lowerBound - offset)..<Int(r.upperBound - offset)])
            if let knownZero, knownZero(r.lowerBound, piece.count) {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                try read(r.lowerBound, piece)
                bytes += UInt64(piece.count)
            }
        }
        asked(bytes)
        if let start { built.digest = Self.digest(continuing: start, UnsafeRawBufferPointer(chunk), noting: &built.states) }
        return built
    }

    /// Puts the previous backup's chunk `i` into `chunk` (its length), every
    /// check a restore makes done (the zero chunk without reading it); false,
    /// counted in `unreadable`, when it cannot be read back.
    /// `frames`: the previous blob's zstd frames, when it was cut as this
    /// writer cuts chunks (the new blob copies those the patch leaves alone).
    /// `hashing` (unencrypted): the previous chunk's first `commonPrefix` bytes
    /// (those before the first changed range: the new chunk's too) are hashed
    /// once into `prefix` (its states at frame boundaries noted in `states`),
    /// the previous chunk's digest finished from a copy and checked before any
    /// of its bytes is used: the caller finishes the new chunk's from `prefix`.
    private func previousChunk(_ patch: Patch, _ i: Int, into chunk: UnsafeMutableRawBufferPointer, decoder: ChunkDecoder,
                               frames: inout DataBlob.Frames?, hashing: Bool, prefix: inout SHA256Hasher?,
                               states: inout ChunkMidstates.Entry,
                               commonPrefix: Int, unreadable: borrowing Mutex<(count: Int, reason: String?)>) -> Bool {
        let d = patch.previous.digests[i]
        if d == zeroDigest && chunk.count == Int(FixedIndex.defaultChunkSize) {
            chunk.initializeMemory(as: UInt8.self, repeating: 0)
            return true
        }
        do {
            if hashing {
                // Decoded where it is patched; on any failure the caller reads the chunk whole over it.
                let (data, payload) = try decoder.decodeUnverified(d, expectedLength: chunk.count, from: patch.reader, into: chunk)
                var h = SHA256Hasher()
                Self.hashFrames(&h, data, to: min(commonPrefix, data.count), noting: &states)
                var check = h
                check.update(UnsafeRawBufferPointer(rebasing: data[h.length...]))
                try ChunkDecoder.check(check.finish(), d, from: patch.reader)
                frames = payload.flatMap { DataBlob.Frames(payload: $0, length: chunk.count) }
                prefix = h
            } else {
                _ = try decoder.decode(d, expectedLength: chunk.count, from: patch.reader, into: chunk)
                frames = decoder.verifiedPayload.flatMap { DataBlob.Frames(payload: $0, length: chunk.count) }
            }
            return true
        } catch {
            unreadable.withLock { u in
                u.count += 1
                if u.reason == nil { u.reason = "\(error)" }
            }
            return false
        }
    }

    /// Adds an index built elsewhere (import from a VMA archive).
    public func addIndex(name: String, _ index: FixedIndex) throws {
        let fileName = name.hasSuffix(".fidx") ? name : name + ".fidx"
        try index.write(to: directory + "/" + fileName)
        state.withLock { $0.files.append(Manifest.FileInfo(filename: fileName, cryptMode: cryptMode, size: index.size, csum: index.indexChecksum.hex)) }
    }

    /// Writes `<name>` (ending in `.blob`) holding `data`, compressed and
    /// encrypted like chunks. `inManifest: false` for the task log, which PBS
    /// keeps beside the manifest's file list.
    public func addBlob(name: String, data: [UInt8], inManifest: Bool = true) throws {
        precondition(name.hasSuffix(".blob") && name != Manifest.fileName)
        let blob = try DataBlob.encode(data, compress: true, crypt: repository.crypt)
        let path = directory + "/" + name
        do { try FileSystem.writeAtomically(path, bytes: blob, mode: 0o600) } catch {
            throw RepositoryError.io(path, "cannot write blob", error)
        }
        guard inManifest else { return }
        state.withLock { $0.files.append(Manifest.FileInfo(filename: name, cryptMode: cryptMode, size: UInt64(blob.count), csum: SHA256.digest(blob).hex)) }
    }

    /// Records that disk index `name` was read from storage snapshot
    /// `snapshot` of `volume`, kept as the next backup's base (in the
    /// manifest's unprotected part); `incrementalRuns` backups since the disk
    /// was last read whole (0: read whole now).
    public func recordBase(name: String, volume: String, snapshot: String, incrementalRuns: Int? = nil) {
        let fileName = name.hasSuffix(".fidx") ? name : name + ".fidx"
        state.withLock {
            $0.bases.append(Manifest.BaseSnapshotRecord(filename: fileName, volume: volume, snapshot: snapshot, incrementalRuns: incrementalRuns))
        }
    }

    /// Makes everything durable (syncfs), then writes the manifest: from
    /// here on the snapshot exists. `notes` and `protected` as for archives.
    public func finish(notes: String? = nil, protected: Bool = false) throws -> Manifest {
        var m = Manifest(snapshot: snapshot, files: state.withLock { $0.files })
        m.unprotected.notes = (notes?.isEmpty ?? true) ? nil : notes
        m.unprotected.chunkUploadStats = stats
        let bases = state.withLock { $0.bases }
        m.unprotected.baseSnapshots = bases.isEmpty ? nil : bases
        if let c = repository.crypt { try m.sign(c) }
        do {
            let dir = try File.open(directory, O_RDONLY | O_DIRECTORY)
            try dir.syncFilesystem()
            if protected { try FileSystem.writeAtomically(directory + "/.protected", "", mode: 0o600) }
            try FileSystem.writeAtomically(directory + "/" + Manifest.fileName, bytes: try m.encodedBlob(), mode: 0o600)
        } catch {
            throw RepositoryError.io("snapshot \(snapshot)", "cannot finish the backup", error)
        }
        state.withLock { $0.done = true }
        removeOlderMidstates()
        groupLock.unlock()
        writerLock.release()
        return m
    }

    /// Only the newest backup of a guest keeps hash states: the next backup
    /// resumes from its, so the older ones' (up to three times the size of
    /// their index) would only take space. Best effort, under the guest's lock.
    private func removeOlderMidstates() {
        let files = state.withLock { $0.midstateFiles }
        guard !files.isEmpty, let older = try? repository.snapshots(type: snapshot.type, id: snapshot.id) else { return }
        for s in older where s != snapshot {
            for f in files { unlink(ChunkMidstates.path(directory: repository.directory(of: s), fileName: f)) }
        }
    }

    /// Removes the snapshot directory (nothing of it is visible) and the locks.
    /// The chunks written stay until gc removes them.
    public func abort() {
        let already = state.withLock { s -> Bool in
            let d = s.done
            s.done = true
            return d
        }
        guard !already else { return }
        if let names = try? FileSystem.list(directory) {
            for n in names { unlink(directory + "/" + n) }
        }
        rmdir(directory)
        groupLock.unlock()
        writerLock.release()
    }
}

@inline(__always)
func isAllZero(_ b: UnsafeRawBufferPointer) -> Bool {
    guard let p = b.baseAddress else { return true }
    var i = 0
    let n = b.count
    while i + 32 <= n {
        let v = p.loadUnaligned(fromByteOffset: i, as: UInt64.self) | p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
            | p.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self) | p.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self)
        if v != 0 { return false }
        i += 32
    }
    while i < n { if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }; i += 1 }
    return true
}
