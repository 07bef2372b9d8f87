import Foundation

/// vzdump's and qmrestore's `bwlimit` (KiB/s): after each piece of work, sleep
/// until the average rate since the start is back under the limit — in
/// slices, because at a low limit one chunk is seconds of sleep and a
/// signal must not wait for it.
struct BandwidthLimit {
    let bytesPerSecond: Double
    let started: Date

    /// nil for 0 (unlimited).
    init?(kibPerSecond: Int, started: Date = Date()) {
        guard kibPerSecond > 0 else { return nil }
        bytesPerSecond = Double(kibPerSecond) * 1024
        self.started = started
    }

    func wait(afterTotal bytes: UInt64, stop: () -> Bool) {
        let due = Double(bytes) / bytesPerSecond
        var ahead = due - Date().timeIntervalSince(started)
        while ahead > 0 && !stop() {
            Thread.sleep(forTimeInterval: min(ahead, 0.1))
            ahead = due - Date().timeIntervalSince(started)
        }
    }
}
