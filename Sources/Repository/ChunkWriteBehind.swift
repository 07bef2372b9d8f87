import Dispatch
import Synchronization

/// One upload thread's blob encoders and the writes of the blobs they
/// made: a new chunk's blob goes to the chunk store on a thread of its own
/// (a serial queue) while the upload thread builds the next chunk into the
/// other encoder. The chunk store writes whole pages with O_DIRECT, and a
/// thread waited 1–15 ms in each ~2 MiB `pwrite` with its core idle (perf
/// sched trace of an incremental run, BENCHMARKS.md session 16); the write
/// thread waits instead. Two encoders, so no blob is copied: an encoder is
/// handed out again only once the write of its last blob is done. A thread,
/// not native AIO (`AsyncWrites`, which restore uses into an existing
/// file): every chunk file is new, and ext4 does a direct write that
/// extends a file synchronously, inside `io_submit`.
///
/// Nothing is stored behind the upload's back: `drain()` waits for every
/// write and throws the first failure before the index is written.
final class ChunkWriteBehind: @unchecked Sendable {
    // @unchecked: `encoders`, `pending` and `turn` are the upload thread's alone;
    // the write thread touches only what `failure` guards and the blob it was given.
    private let encoders: [DataBlob.Encoder]
    private var pending: [DispatchGroup?]
    private var turn = 0
    private let queue = DispatchQueue(label: "snapdump.chunk-writes")
    private let failure = Mutex<(any Error)?>(nil)

    init(capacity: Int) {
        encoders = [DataBlob.Encoder(capacity: capacity), DataBlob.Encoder(capacity: capacity)]
        pending = [nil, nil]
    }

    /// The encoder for the next chunk, its previous blob written.
    func encoder() throws -> DataBlob.Encoder {
        pending[turn]?.wait()
        pending[turn] = nil
        try rethrow()
        return encoders[turn]
    }

    /// Writes `blob` (made by `encoder()`'s last answer) with `write` on the
    /// write thread; the next `encoder()` is the other one.
    func submit(_ blob: UnsafeRawBufferPointer, _ write: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) {
        let group = DispatchGroup()
        pending[turn] = group
        nonisolated(unsafe) let bytes = blob
        // Holds self, so the encoders outlive the write of their blob.
        queue.async(group: group) { [self] in
            guard failure.withLock({ $0 == nil }) else { return }
            do { try write(bytes) } catch { failure.withLock { if $0 == nil { $0 = error } } }
        }
        turn ^= 1
    }

    /// Waits for every write; the first that failed is thrown.
    func drain() throws {
        for g in pending { g?.wait() }
        pending = [nil, nil]
        try rethrow()
    }

    private func rethrow() throws {
        if let e = failure.withLock({ $0 }) { throw e }
    }
}
