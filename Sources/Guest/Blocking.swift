import Foundation
import SnapdumpSystem

/// A point in time on the monotonic clock, used for deadlines.
typealias Deadline = ContinuousClock.Instant

extension ContinuousClock.Instant {
    /// Time left until this instant, never negative.
    var remaining: Duration {
        let r = self - ContinuousClock.now
        return r < .zero ? .zero : r
    }

    var hasPassed: Bool { ContinuousClock.now >= self }
}

extension Duration {
    /// Seconds as a Double, for messages and system calls.
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    /// "3 s", "250 ms": for error messages.
    var shortDescription: String {
        let s = seconds
        if s >= 1 { return s.rounded() == s ? "\(Int(s)) s" : String(format: "%.1f s", s) }
        return "\(Int((s * 1000).rounded())) ms"
    }
}
