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

/// The command line as Proxmox's tools take it, rewritten into what
/// ArgumentParser parses:
/// - global options before the subcommand (`snapdump --config-dir DIR vm list`)
///   move behind it (`snapdump vm list --config-dir DIR`);
/// - boolean flags take Proxmox's value form too: `--all 1`, `--quiet yes`,
///   `--force=1` mean the flag, `--all 0` means its absence. The value is
///   read by `ConfigValue.bool`, the one boolean parser; a word that is not
///   a boolean stays an argument (`--quiet 100` is `--quiet` and VMID 100).
enum ProxmoxArguments {
    /// Options of `GlobalOptions`, each taking one value.
    static let globalOptions: Set<String> = ["--config-dir"]
    /// Every `@Flag` of the commands (Proxmox booleans that default to off).
    static let booleanFlags: Set<String> = [
        "--all", "--quiet", "--dry-run", "--delete", "--force", "--start", "--unique", "--purge", "--force-stop", "--stdout", "--full",
    ]

    static func normalize(_ args: [String], root: any ParsableCommand.Type) -> [String] {
        var globals: [String] = []
        var rest: [String] = []
        var i = 0
        // Leading global options, up to the first word that is not one.
        while i < args.count {
            let a = args[i]
            if globalOptions.contains(a), i + 1 < args.count {
                globals += [a, args[i + 1]]
                i += 2
            } else if let eq = a.firstIndex(of: "="), globalOptions.contains(String(a[..<eq])) {
                globals.append(a)
                i += 1
            } else {
                break
            }
        }
        // The subcommand path, then the global options right behind it.
        var command = root
        while i < args.count, let sub = command.configuration.subcommands.first(where: { name(of: $0) == args[i] }) {
            rest.append(args[i])
            command = sub
            i += 1
        }
        rest += globals
        while i < args.count {
            let a = args[i]
            i += 1
            if a == "--" {
                rest += args[(i - 1)...]
                break
            }
            if let eq = a.firstIndex(of: "="), booleanFlags.contains(String(a[..<eq])) {
                let flag = String(a[..<eq])
                switch ConfigValue.bool(String(a[a.index(after: eq)...])) {
                case true?: rest.append(flag)
                case false?: break
                case nil: rest.append(a) // ArgumentParser names the bad value
                }
                continue
            }
            if booleanFlags.contains(a), i < args.count, let value = ConfigValue.bool(args[i]) {
                if value { rest.append(a) }
                i += 1
                continue
            }
            rest.append(a)
        }
        return rest
    }

    static func name(of command: any ParsableCommand.Type) -> String {
        command.configuration.commandName ?? String(describing: command).lowercased()
    }
}
