#if canImport(Glibc)
import Glibc
#endif
import CZstd
import Foundation
import Synchronization
import SnapdumpSystem
import Archive

/// Reads a disk back from a fixed index: chunks fetched, CRC-checked,
/// decrypted, decompressed and digest-checked on several threads, written
/// with `write(offset, bytes)` (thread-safe, e.g. pwrite). Chunks equal to the
/// zero chunk are not written at all when `sparse` (the target reads as zeros).
public struct ChunkReader: Sendable {
    public let repository: Repository
    public let snapshot: SnapshotName

    public init(repository: Repository, snapshot: SnapshotName) {
        self.repository = repository
        self.snapshot = snapshot
    }

    /// One chunk's data, every check done; errors name the chunk and the snapshot.
    public func chunk(_ digest: SHA256Digest, expectedLength: Int) throws -> [UInt8] {
        let decoder = ChunkDecoder(capacity: max(expectedLength, 1))
        return Array(try decoder.decode(digest, expectedLength: expectedLength, from: self))
    }

    /// Writes every chunk of `index` with `write`. Each thread decodes into
    /// buffers of its own, reused from chunk to chunk (memory: about two
    /// chunks per thread); the buffer handed to `write` is 4096-aligned and
    /// chunks start at multiples of the chunk size, so a writer may pass
    /// whole chunks to O_DIRECT (`DirectFile`).
    public func restore(_ index: FixedIndex, sparse: Bool, threads: Int = max(4, ProcessInfo.processInfo.activeProcessorCount),
                        write: @escaping @Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void,
                        progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        try restore(index, sparse: sparse, threads: threads, submit: { offset, bytes, done in
            do { try write(offset, bytes) } catch { return done(error) }
            done(nil)
        }, progress: progress)
    }

    /// As `restore(_:sparse:threads:write:progress:)`, but a chunk's write
    /// may still be in flight when `submit` returns (`DirectFile.submit`):
    /// `done` is called once, on any thread, when its buffer may be reused,
    /// with the write's error if any. Meanwhile the thread decodes the next
    /// chunk into a second buffer, so several writes are in flight (a
    /// synchronous O_DIRECT write into a hole of an ext4 file holds the inode
    /// lock for the whole I/O: the writes of all threads went one at a time).
    /// Returns once every write is done; throws the first error.
    public func restore(_ index: FixedIndex, sparse: Bool, threads: Int = max(4, ProcessInfo.processInfo.activeProcessorCount),
                        submit: @escaping @Sendable (UInt64, UnsafeRawBufferPointer, @escaping @Sendable ((any Error)?) -> Void) -> Void,
                        progress: (@Sendable (UInt64) -> Void)? = nil) throws {
        let zero: SHA256Digest = {
            guard let c = repository.crypt else { return DeviceDigest.zeroChunkDigest }
            let z = [UInt8](repeating: 0, count: Int(index.chunkSize))
            return z.withUnsafeBytes { c.digest($0) }
        }()
        let next = Atomic<Int>(0)
        let done = Atomic<UInt64>(0)
        let failure = FirstError()
        let count = index.chunkCount
        DispatchQueue.concurrentPerform(iterations: max(1, min(threads, count))) { _ in
            let slots = DecoderSlots(capacity: Int(index.chunkSize))
            // The decoders' buffers outlive the writes in flight from them.
            defer { slots.waitIdle() }
            while failure.error == nil {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < count else { break }
                let len = index.chunkLength(i)
                let offset = UInt64(i) * index.chunkSize
                let slot = slots.take()
                do {
                    if !(sparse && index.digests[i] == zero && len == Int(index.chunkSize)) {
                        let data = try slot.decoder.decode(index.digests[i], expectedLength: len, from: self)
                        if sparse && isAllZero(data) {
                            // a short zero tail: nothing to write on a sparse target
                            slots.release(slot)
                        } else {
                            submit(offset, data) { error in
                                if let error { failure.record(error) }
                                slots.release(slot)
                            }
                        }
                    } else {
                        slots.release(slot)
                    }
                    progress?(done.add(UInt64(len), ordering: .relaxed).newValue)
                } catch {
                    slots.release(slot)
                    failure.record(error)
                }
            }
        }
        if let e = failure.error { throw e }
    }
}

/// The first error of any thread or write completion.
private final class FirstError: Sendable {
    private let first = Mutex<(any Error)?>(nil)
    var error: (any Error)? { first.withLock { $0 } }
    func record(_ e: any Error) { first.withLock { if $0 == nil { $0 = e } } }
}

/// A restore thread's decoders: one while each write completes before the
/// next chunk (a synchronous writer), a second one while the buffer of the
/// first is still being written.
private final class DecoderSlots: @unchecked Sendable {
    // @unchecked: `slots` and their `busy` flags are guarded by `cond`; a busy
    // slot's decoder belongs to its thread, or to the write in flight from it.
    final class Slot: @unchecked Sendable {
        let decoder: ChunkDecoder
        var busy = true
        init(_ d: ChunkDecoder) { decoder = d }
    }
    static let maxSlots = 2
    private let capacity: Int
    private let cond = NSCondition()
    private var slots: [Slot] = []

    init(capacity: Int) { self.capacity = capacity }

    /// A slot whose buffer nothing reads any more (new while under `maxSlots`), marked busy.
    func take() -> Slot {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let s = slots.first(where: { !$0.busy }) {
                s.busy = true
                return s
            }
            if slots.count < Self.maxSlots {
                let s = Slot(ChunkDecoder(capacity: capacity))
                slots.append(s)
                return s
            }
            cond.wait()
        }
    }

    func release(_ slot: Slot) {
        cond.lock()
        slot.busy = false
        cond.broadcast()
        cond.unlock()
    }

    /// Waits until no write reads a slot's buffer.
    func waitIdle() {
        cond.lock()
        while slots.contains(where: { $0.busy }) { cond.wait() }
        cond.unlock()
    }
}

/// One thread's chunk decoding: the blob read into a buffer, CRC checked,
/// decrypted, decompressed straight into an aligned output buffer by a zstd
/// context kept for the next chunk, digest checked. Profiling a restore
/// showed the per-chunk allocations (a zero-filled array for the file, a
/// copy of the payload, a zero-filled array for the output, a fresh zstd
/// context) as much CPU as the decompression itself.
final class ChunkDecoder {
    private var blobMemory: ChunkMemory
    private var blob: UnsafeMutableRawBufferPointer { blobMemory.bytes }
    private let capacity: Int
    /// Allocated on first use: a caller that always decodes `into` its own buffer never faults it in.
    private lazy var outputMemory = ChunkMemory(byteCount: capacity)
    private let context: OpaquePointer
    /// The zstd payload of the chunk last decoded, when it was an unencrypted
    /// compressed blob whose digest checked (valid until the next call): an
    /// incremental backup copies its unchanged frames.
    private(set) var verifiedPayload: UnsafeRawBufferPointer?

    init(capacity: Int) {
        self.capacity = capacity
        blobMemory = ChunkMemory(byteCount: 64 << 10)
        context = ZSTD_createDCtx()!
    }

    deinit {
        ZSTD_freeDCtx(context)
    }

    /// The chunk's data, valid until the next call.
    /// `into`: as `decodeUnverified`'s.
    func decode(_ digest: SHA256Digest, expectedLength: Int, from reader: ChunkReader,
                into target: UnsafeMutableRawBufferPointer? = nil) throws -> UnsafeRawBufferPointer {
        verifiedPayload = nil
        let (data, zstdPayload) = try decodeUnverified(digest, expectedLength: expectedLength, from: reader, into: target)
        let actual = reader.repository.crypt.map { $0.digest(data) } ?? SHA256.digest(data)
        try Self.check(actual, digest, from: reader)
        verifiedPayload = zstdPayload
        return data
    }

    /// The error `decode` throws when the data hashes to `actual`, not `digest`.
    static func check(_ actual: SHA256Digest, _ digest: SHA256Digest, from reader: ChunkReader) throws {
        guard actual == digest else {
            throw RepositoryError(.corrupt, "chunk \(digest.hex) of snapshot \(reader.snapshot)", "digest mismatch (content is \(actual.hex))")
        }
    }

    /// As `decode`, every check made but the digest's, which the caller
    /// makes (`check`) before using the data or the payload (both valid
    /// until the next call): an incremental backup hashes the previous chunk
    /// together with the chunk patched from it (`SHA256SharedPrefix`).
    /// `zstdPayload`: as `verifiedPayload`, once checked.
    /// `into`: where to put the data (at least `expectedLength` bytes; holds
    /// garbage when this throws), instead of the decoder's own buffer: an
    /// incremental backup decodes the previous chunk straight into the chunk
    /// it patches, not through a copy of 4 MiB.
    func decodeUnverified(_ digest: SHA256Digest, expectedLength: Int, from reader: ChunkReader,
                          into target: UnsafeMutableRawBufferPointer? = nil) throws -> (data: UnsafeRawBufferPointer, zstdPayload: UnsafeRawBufferPointer?) {
        let output = target ?? outputMemory.bytes
        precondition(expectedLength <= output.count)
        verifiedPayload = nil
        let repository = reader.repository
        let object = "chunk \(digest.hex) of snapshot \(reader.snapshot)"
        let stored = try read(repository.chunks.path(of: digest), digest: digest, object: object)
        let kind = try DataBlob.check(stored, object: object)
        let length: Int
        var zstdPayload: UnsafeRawBufferPointer?
        if kind.isEncrypted {
            let data = try DataBlob.decode(stored, crypt: repository.crypt, object: object, limit: max(expectedLength, 1))
            guard data.count == expectedLength else {
                throw RepositoryError(.corrupt, object, "holds \(data.count) bytes, the index expects \(expectedLength)")
            }
            data.withUnsafeBytes { output.copyMemory(from: $0) }
            length = data.count
        } else {
            let payload = UnsafeRawBufferPointer(rebasing: stored[DataBlob.Kind.plain.headerSize...])
            if kind.isCompressed {
                let declared = ZSTD_getFrameContentSize(payload.baseAddress, payload.count)
                // ZSTD_CONTENTSIZE_UNKNOWN and _ERROR are the two largest values (macros Swift does not import).
                if declared < UInt64.max - 1 && declared > UInt64(expectedLength) {
                    throw RepositoryError(.corrupt, object, "holds \(declared) bytes, the index expects \(expectedLength)")
                }
                let n = ZSTD_decompressDCtx(context, output.baseAddress, expectedLength, payload.baseAddress, payload.count)
                if ZSTD_isError(n) != 0 {
                    throw RepositoryError(.corrupt, object, "cannot decompress: zstd: \(String(cString: ZSTD_getErrorName(n)))")
                }
                length = n
                zstdPayload = payload
            } else {
                guard payload.count <= expectedLength else {
                    throw RepositoryError(.corrupt, object, "holds \(payload.count) bytes, the index expects \(expectedLength)")
                }
                if payload.count > 0 { output.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
                length = payload.count
            }
            guard length == expectedLength else {
                throw RepositoryError(.corrupt, object, "holds \(length) bytes, the index expects \(expectedLength)")
            }
        }
        return (UnsafeRawBufferPointer(rebasing: output[..<length]), zstdPayload)
    }

    /// The previous chunk `digest`'s blob read and CRC-checked, and its frames
    /// `decoding` decompressed into `target` at their place in the chunk (of
    /// `expectedLength` bytes); nil when the blob is not an unencrypted zstd
    /// blob cut as `DataBlob.Encoder` cuts a chunk. Nothing is digest-checked:
    /// an incremental backup resuming a hash at a recorded frame boundary
    /// checks the frames it decoded (`BackupWriter`). The frames' payload is
    /// valid until the next call.
    func decodeFrames(_ digest: SHA256Digest, expectedLength: Int, from reader: ChunkReader,
                      into target: UnsafeMutableRawBufferPointer, decoding: Range<Int>) throws -> DataBlob.Frames? {
        precondition(expectedLength <= target.count)
        verifiedPayload = nil
        let object = "chunk \(digest.hex) of snapshot \(reader.snapshot)"
        let stored = try read(reader.repository.chunks.path(of: digest), digest: digest, object: object)
        let kind = try DataBlob.check(stored, object: object)
        guard !kind.isEncrypted, kind.isCompressed,
              let frames = DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: stored[DataBlob.Kind.plain.headerSize...]), length: expectedLength)
        else { return nil }
        try decompress(frames, decoding, into: target, length: expectedLength, object: object)
        return frames
    }

    /// Frames `range` of `frames` (a chunk of `length` bytes) decompressed into `target` at their place.
    func decompress(_ frames: DataBlob.Frames, _ range: Range<Int>, into target: UnsafeMutableRawBufferPointer,
                    length: Int, object: String) throws {
        for f in range {
            let source = frames.frame(f)
            let plain = min(DataBlob.frameSize, length - f * DataBlob.frameSize)
            let n = ZSTD_decompressDCtx(context, target.baseAddress! + f * DataBlob.frameSize, plain, source.baseAddress, source.count)
            if ZSTD_isError(n) != 0 {
                throw RepositoryError(.corrupt, object, "cannot decompress frame \(f): zstd: \(String(cString: ZSTD_getErrorName(n)))")
            }
            guard n == plain else { throw RepositoryError(.corrupt, object, "frame \(f) holds \(n) bytes, not \(plain)") }
        }
    }

    /// The chunk file's bytes, in `blob` (grown to the file's size).
    private func read(_ path: String, digest: SHA256Digest, object: String) throws -> UnsafeRawBufferPointer {
        let file: File
        do { file = try File.openForReading(path) } catch let e as SystemError where e.errno == ENOENT {
            throw RepositoryError(.missingChunk, object, "missing from the chunk store (\(path))")
        } catch {
            throw RepositoryError.io(object, "cannot read", error)
        }
        do {
            let size = Int(try file.size())
            guard size <= DataBlob.maxSize else { throw RepositoryError(.corrupt, object, "blob of \(size) bytes is larger than any chunk") }
            if size + 1 > blob.count {
                // Room for any blob of a full chunk at once: every growth is fresh memory to fault in.
                blobMemory = ChunkMemory(byteCount: max(size + 1, capacity + (64 << 10)))
            }
            // One byte more than fstat said: a file that grew meanwhile is read whole, not cut.
            let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: blob[...size]), at: 0)
            guard n <= size else { throw RepositoryError(.io, object, "changed size while being read") }
            return UnsafeRawBufferPointer(rebasing: blob[..<n])
        } catch let e as RepositoryError {
            throw e
        } catch {
            throw RepositoryError.io(object, "cannot read", error)
        }
    }
}
