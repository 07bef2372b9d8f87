#if canImport(Glibc)
import Glibc
#endif
import CShims
import Foundation

/// Positional writes in flight together through Linux native AIO, each
/// completion handed to a closure on a reaper thread of its own.
///
/// Why: a synchronous O_DIRECT write into a hole of an ext4 file holds the
/// inode lock for the whole device I/O, so writes from several threads go
/// one at a time and the device sees one request after another. Submitted
/// asynchronously, the lock is held only while the write is set up (blocks
/// allocated, bios sent) and the next one can follow at once: on the test
/// machine 1 GiB of 4 MiB writes into a fresh sparse file took 0.60–0.78 s
/// one at a time and 0.37–0.54 s with 4–8 in flight (BENCHMARKS.md).
///
/// At most `limit` writes are in flight; `submit` waits for room.
final class AsyncWrites: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `cond`; `context` is immutable.
    private let context: UInt64
    private let limit: Int
    private let cond = NSCondition()
    /// Completion of every write submitted (or being submitted), by token.
    private var completions: [UInt64: @Sendable (Int64) -> Void] = [:]
    /// Writes io_submit took and the reaper has not reaped yet (briefly
    /// negative when a completion is reaped before its submitter counts it).
    private var submitted = 0
    private var nextToken: UInt64 = 0
    private var stopping = false

    /// nil when the kernel has no AIO for us (io_setup refused).
    init?(limit: Int = 32) {
        var ctx: UInt64 = 0
        guard snapdump_aio_setup(UInt32(limit), &ctx) == 0 else { return nil }
        context = ctx
        self.limit = limit
        let t = Thread { [self] in
            reap()
            // io_destroy waits for an RCU grace period even with nothing in
            // flight (34 ms at the end of a 2 GiB restore, more under load):
            // here, after the last completion, nobody waits for it.
            _ = snapdump_aio_destroy(context)
        }
        t.name = "aio-reaper"
        t.start()
    }

    /// Writes `bytes` to `fd` at `offset`; `completion` gets the bytes
    /// written or -errno, on the reaper thread. `bytes` must stay valid until
    /// then. False (errno set, `completion` never called) when io_submit
    /// refuses the write: the caller writes it some other way.
    func submit(fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64,
                completion: @escaping @Sendable (Int64) -> Void) -> Bool {
        cond.lock()
        while completions.count >= limit { cond.wait() }
        let token = nextToken
        nextToken += 1
        completions[token] = completion
        cond.unlock()
        let ok = snapdump_aio_pwrite(context, fd, bytes.baseAddress, UInt64(bytes.count), offset, token) == 0
        let error = errno
        cond.lock()
        if ok {
            submitted += 1
        } else {
            completions[token] = nil
        }
        cond.broadcast()
        cond.unlock()
        errno = error
        return ok
    }

    /// Waits for every write in flight (their completions have run when it
    /// returns), then stops the reaper, which frees the context on its way
    /// out. No `submit` after this.
    func close() {
        cond.lock()
        while !completions.isEmpty { cond.wait() }
        stopping = true
        cond.broadcast()
        cond.unlock()
    }

    private func reap() {
        var tokens = [UInt64](repeating: 0, count: 64)
        var results = [Int64](repeating: 0, count: 64)
        cond.lock()
        while true {
            // io_getevents only with a write in flight: it would never return otherwise.
            while submitted <= 0 && !stopping { cond.wait() }
            if submitted <= 0 { break }
            cond.unlock()
            let n = Int(snapdump_aio_reap(context, 1, 64, &tokens, &results))
            cond.lock()
            guard n > 0 else { continue }
            var done: [(@Sendable (Int64) -> Void, Int64)] = []
            for i in 0..<n {
                submitted -= 1
                if let c = completions[tokens[i]] { done.append((c, results[i])) }
            }
            cond.unlock()
            for (c, r) in done { c(r) }
            cond.lock()
            // Removed only once run: `close` returns after the last completion, not during it.
            for i in 0..<n { completions[tokens[i]] = nil }
            cond.broadcast()
        }
        cond.unlock()
    }
}
