import Foundation
import SnapdumpSystem

/// Human figures for logs, as vzdump prints them.
enum Formatting {
    static func bytes(_ n: UInt64) -> String { ByteCount.format(n) }

    static func rate(_ bytes: UInt64, seconds: Double) -> String {
        seconds > 0 ? Formatting.bytes(UInt64(Double(bytes) / seconds)) + "/s" : "-"
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return String(format: "%02d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60)
    }

    static func milliseconds(_ d: Duration) -> Int64 {
        let c = d.components
        return c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000
    }
}
