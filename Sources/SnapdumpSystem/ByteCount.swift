import Foundation

/// Byte counts for people: `1.50 GiB`, as vzdump and pvesm print them.
public enum ByteCount {
    public static func format(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[i])
    }
}
