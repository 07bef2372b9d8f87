import Foundation
import Synchronization
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
        let object = "chunk \(digest.hex) of snapshot \(snapshot)"
        let blob: [UInt8]
        do { blob = try repository.chunks.read(digest) } catch let e as RepositoryError {
            throw RepositoryError(e.code, object, e.message)
        }
        let data = try DataBlob.decode(blob, crypt: repository.crypt, object: object, limit: max(expectedLength, 1))
        guard data.count == expectedLength else {
            throw RepositoryError(.corrupt, object, "holds \(data.count) bytes, the index expects \(expectedLength)")
        }
        let actual = data.withUnsafeBytes { b in repository.crypt.map { $0.digest(b) } ?? SHA256.digest(b) }
        guard actual == digest else { throw RepositoryError(.corrupt, object, "digest mismatch (content is \(actual.hex))") }
        return data
    }

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
            while failure.withLock({ $0 == nil }) {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < count else { break }
                let len = index.chunkLength(i)
                let offset = UInt64(i) * index.chunkSize
                do {
                    if !(sparse && index.digests[i] == zero && len == Int(index.chunkSize)) {
                        let data = try chunk(index.digests[i], expectedLength: len)
                        if sparse && data.withUnsafeBytes({ isAllZero($0) }) {
                            // a short zero tail: nothing to write on a sparse target
                        } else {
                            try data.withUnsafeBytes { try write(offset, $0) }
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
