import Foundation

/// SIGINT and SIGTERM during a backup: instead of dying with the guest paused
/// or a snapshot left behind, the job stops at the next safe point and runs
/// its cleanup. A second signal is not special: cleanup always completes.
public final class Interrupt: @unchecked Sendable {
    // @unchecked: `signal` is guarded by `lock`; sources live as long as self.
    private let lock = NSLock()
    private var signal: Int32?
    private var sources: [DispatchSourceSignal] = []

    public init() {}

    /// Catches SIGINT and SIGTERM from now on.
    public func install() {
        for sig in [SIGINT, SIGTERM] {
            Foundation.signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [weak self] in self?.raise(sig) }
            s.resume()
            sources.append(s)
        }
    }

    public func raise(_ sig: Int32) {
        lock.lock()
        if signal == nil { signal = sig }
        lock.unlock()
    }

    public var received: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return signal
    }

    public struct Interrupted: Error, CustomStringConvertible {
        public var signal: Int32
        public var description: String { "interrupted by signal \(signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "\(signal)")" }
    }

    public func check() throws {
        if let s = received { throw Interrupted(signal: s) }
    }
}
