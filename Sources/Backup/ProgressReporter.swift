import Foundation

/// Progress of the archive phase: a live line on a terminal, and a log line
/// every 10 % as vzdump writes (`INFO:  10% (1.00 GiB of 10.00 GiB) in 3s, read: …`).
final class ProgressReporter: @unchecked Sendable {
    // @unchecked: called from the pipeline's writer thread only.
    private let log: TaskLog
    private let terminal: Bool
    private var total: UInt64 = 0
    private var started = Date()
    private var nextPercent = 10
    private var lastDraw = Date.distantPast

    init(log: TaskLog, terminal: Bool = isatty(2) == 1) {
        self.log = log
        self.terminal = terminal
    }

    func start(total: UInt64) {
        self.total = total
        started = Date()
        nextPercent = 10
    }

    func update(done: UInt64) {
        guard total > 0 else { return }
        let percent = Int(done * 100 / total)
        let elapsed = Date().timeIntervalSince(started)
        if percent >= nextPercent {
            if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            log.info(String(format: "%3d%% (%@ of %@) in %ds, read: %@", percent, Formatting.bytes(done), Formatting.bytes(total),
                            Int(elapsed), Formatting.rate(done, seconds: elapsed)))
            while nextPercent <= percent { nextPercent += 10 }
        } else if terminal, Date().timeIntervalSince(lastDraw) > 0.2 {
            lastDraw = Date()
            let rate = elapsed > 0 ? Double(done) / elapsed : 0
            let eta = rate > 0 ? Double(total - done) / rate : 0
            FileHandle.standardError.write(Data(String(format: "\r\u{1B}[K%3d%% %@ of %@, %@, ETA %@", percent, Formatting.bytes(done),
                                                       Formatting.bytes(total), Formatting.rate(done, seconds: elapsed),
                                                       Formatting.duration(eta)).utf8))
        }
    }

    func finish() {
        if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}
