import ArgumentParser
import SnapdumpSystem
import SnapdumpConfig
import Storage

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("config-dir"), help: "Configuration directory (default /etc/snapdump, or $SNAPDUMP_CONFIG_DIR).")
    var configDir: String?

    var paths: SnapdumpPaths { SnapdumpPaths.resolve(configDir: configDir) }

    func storages() throws -> StorageRegistry { try StorageRegistry(paths: paths) }
}

/// Sizes as `pvesm alloc` takes them: a bare number is KiB; suffixes K, M, G, T.
enum SizeArgument {
    static func parse(_ text: String) throws -> UInt64 {
        var t = text.uppercased()
        var unit: UInt64 = 1024
        if let last = t.last, let mult = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40][String(last)] {
            unit = UInt64(mult)
            t.removeLast()
        }
        guard let n = UInt64(t), n > 0, n <= UInt64.max / unit else {
            throw ValidationError("invalid size '\(text)': a number of KiB, or with suffix K, M, G or T")
        }
        return n * unit
    }

}

/// Prints rows as aligned columns, as pvesm and zfs list do.
enum Table {
    static func render(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

import Foundation
