import Foundation

/// Progress of the archive phase, as vzdump writes it to the task log:
/// `INFO:  66% (16.6 GiB of 25.0 GiB) in 36s, read: 465.2 MiB/s, write: 320.6 MiB/s`
/// at each percent step, at most one line every `interval` seconds (always
/// the last one), with read and write rates over the interval since the
/// previous line (write: data that is not zero). On a terminal a live line
/// in between. Every line is also a structured event for `--output-format json`.
final class ProgressReporter: @unchecked Sendable {
    // @unchecked: called from the pipeline's writer thread only.
    private let log: TaskLog
    private let terminal: Bool
    private let interval: TimeInterval
    private var total: UInt64 = 0
    private var started = Date()
    private var lastPercent = -1
    private var lastLine = Date.distantPast
    private var lastDone: UInt64 = 0
    private var lastZero: UInt64 = 0
    private var lastDraw = Date.distantPast
    private(set) var zeroBytes: UInt64 = 0

    init(log: TaskLog, terminal: Bool = isatty(2) == 1, interval: TimeInterval = 3) {
        self.log = log
        self.terminal = terminal && !log.jsonEvents
        self.interval = interval
    }

    func start(total: UInt64) {
        self.total = total
        started = Date()
        lastLine = started
        lastPercent = -1
        lastDone = 0
        lastZero = 0
    }

    /// `done` bytes of the devices processed, `zero` of them zero (holes and zero blocks).
    func update(done: UInt64, zero: UInt64) {
        guard total > 0 else { return }
        zeroBytes = zero
        let now = Date()
        let percent = Int(done * 100 / total)
        if percent != lastPercent && (now.timeIntervalSince(lastLine) >= interval || done == total) {
            let span = max(now.timeIntervalSince(lastLine), 0.001)
            let read = Double(done - lastDone) / span
            let write = Double((done - lastDone) - min(done - lastDone, zero - lastZero)) / span
            if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            let elapsed = Int(now.timeIntervalSince(started))
            log.progress(String(format: "%3d%% (%@ of %@) in %ds, read: %@/s, write: %@/s", percent, Formatting.bytes(done),
                                Formatting.bytes(total), elapsed, Formatting.bytes(UInt64(read)), Formatting.bytes(UInt64(write))),
                         event: ["percent": Double(percent), "bytes_done": Double(done), "bytes_total": Double(total),
                                 "zero_bytes": Double(zero), "seconds_elapsed": Double(elapsed),
                                 "read_bytes_per_second": read.rounded(), "write_bytes_per_second": write.rounded()])
            lastPercent = percent
            lastLine = now
            lastDone = done
            lastZero = zero
        } else if terminal, now.timeIntervalSince(lastDraw) > 0.2 {
            lastDraw = now
            let elapsed = now.timeIntervalSince(started)
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

    /// vzdump's line after the archive: `backup is sparse: 12.3 GiB (49%) total zero data`.
    func sparseLine() -> String? {
        guard total > 0, zeroBytes > 0 else { return nil }
        return "backup is sparse: \(Formatting.bytes(zeroBytes)) (\(zeroBytes * 100 / total)%) total zero data"
    }
}
