import Foundation

/// Runs blocking work (waiting on a process, pread/fsync loops, a file lock,
/// `Command.capture`) on a dedicated thread, so it never stalls Swift's
/// cooperative thread pool — which has as many threads as cores, two here.
public enum Blocking {
    public static func run<T: Sendable>(_ label: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            let t = Thread { c.resume(with: Result { try body() }) }
            t.name = "snapdump-\(label)"
            t.start()
        }
    }
}
