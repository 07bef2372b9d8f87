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
        let zero: SHA256Digest = {
            guard let c = repository.crypt else { return DeviceDigest.zeroChunkDigest }
            let z = [UInt8](repeating: 0, count: Int(index.chunkSize))
            return z.withUnsafeBytes { c.digest($0) }
        }()
        let next = Atomic<Int>(0)
        let done = Atomic<UInt64>(0)
        let failure = Mutex<(any Error)?>(nil)
        let count = index.chunkCount
        DispatchQueue.concurrentPerform(iterations: max(1, min(threads, count))) { _ in
            let decoder = ChunkDecoder(capacity: Int(index.chunkSize))
            while failure.withLock({ $0 == nil }) {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < count else { break }
                let len = index.chunkLength(i)
                let offset = UInt64(i) * index.chunkSize
                do {
                    if !(sparse && index.digests[i] == zero && len == Int(index.chunkSize)) {
                        let data = try decoder.decode(index.digests[i], expectedLength: len, from: self)
                        if sparse && isAllZero(data) {
                            // a short zero tail: nothing to write on a sparse target
                        } else {
                            try write(offset, data)
                        }
                    }
                    progress?(done.add(UInt64(len), ordering: .relaxed).newValue)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
    }
}

/// One thread's chunk decoding: the blob read into a buffer, CRC checked,
/// decrypted, decompressed straight into an aligned output buffer by a zstd
/// context kept for the next chunk, digest checked. Profiling a restore
/// showed the per-chunk allocations (a zero-filled array for the file, a
/// copy of the payload, a zero-filled array for the output, a fresh zstd
/// context) as much CPU as the decompression itself.
final class ChunkDecoder {
    private var blob: UnsafeMutableRawBufferPointer
    private let output: UnsafeMutableRawBufferPointer
    private let context: OpaquePointer

    init(capacity: Int) {
        output = .allocate(byteCount: capacity, alignment: 4096)
        blob = .allocate(byteCount: 64 << 10, alignment: 16)
        context = ZSTD_createDCtx()!
    }

    deinit {
        output.deallocate()
        blob.deallocate()
        ZSTD_freeDCtx(context)
    }

    /// The chunk's data, valid until the next call.
    func decode(_ digest: SHA256Digest, expectedLength: Int, from reader: ChunkReader) throws -> UnsafeRawBufferPointer {
        precondition(expectedLength <= output.count)
        let repository = reader.repository
        let object = "chunk \(digest.hex) of snapshot \(reader.snapshot)"
        let stored = try read(repository.chunks.path(of: digest), digest: digest, object: object)
        let kind = try DataBlob.check(stored, object: object)
        let length: Int
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
        let data = UnsafeRawBufferPointer(rebasing: output[..<length])
        let actual = repository.crypt.map { $0.digest(data) } ?? SHA256.digest(data)
        guard actual == digest else { throw RepositoryError(.corrupt, object, "digest mismatch (content is \(actual.hex))") }
        return data
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
                blob.deallocate()
                blob = .allocate(byteCount: size + 1, alignment: 16)
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
