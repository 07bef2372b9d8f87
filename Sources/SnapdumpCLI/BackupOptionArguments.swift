import ArgumentParser
import Backup

/// The vzdump options shared by `backup`, `job add` and `job set`. Values stay
/// strings here: `VzdumpOption.table` (in Backup) parses and range-checks
/// them, so the command line, jobs.cfg and vzdump.conf accept exactly the
/// same things. `--all` and `--quiet` also take Proxmox's `--all 1` form
/// (`ProxmoxArguments`).
struct BackupOptionArguments: ParsableArguments {
    @Flag(help: .vzdump("all", "also --all 1")) var all = false
    @Option(help: .vzdump("exclude")) var exclude: String?
    @Option(help: .vzdump("mode")) var mode: String?
    @Option(help: .vzdump("storage")) var storage: String?
    @Option(help: .vzdump("dumpdir")) var dumpdir: String?
    @Option(help: .vzdump("compress")) var compress: String?
    @Option(help: .vzdump("zstd")) var zstd: String?
    @Option(help: .vzdump("stopwait")) var stopwait: String?
    @Option(help: .vzdump("bwlimit")) var bwlimit: String?
    @Option(help: .vzdump("tmpdir")) var tmpdir: String?
    @Option(name: .customLong("snapshot-fallback"), help: .vzdump("snapshot-fallback")) var snapshotFallback: String?
    @Option(help: .vzdump("lockwait")) var lockwait: String?
    @Flag(help: .vzdump("quiet", "also --quiet 1")) var quiet = false
    @Option(name: .customLong("prune-backups"), help: .vzdump("prune-backups")) var pruneBackups: String?
    @Option(help: .vzdump("remove")) var remove: String?
    @Option(name: .customLong("notes-template"), help: .vzdump("notes-template")) var notesTemplate: String?
    @Option(help: .vzdump("protected")) var protected: String?
    @Option(help: .vzdump("script")) var script: String?
    @Option(help: .vzdump("ionice")) var ionice: String?
    @Option(help: .vzdump("mailto")) var mailto: String?
    @Option(help: .vzdump("mailnotification")) var mailnotification: String?
    @Option(help: .vzdump("fleecing")) var fleecing: String?
    @Option(help: .vzdump("pigz")) var pigz: String?
    @Option(help: .vzdump("performance")) var performance: String?
    @Flag(help: .vzdump("full", "also --full 1")) var full = false
    @Option(name: .customLong("full-every"), help: .vzdump("full-every")) var fullEvery: String?

    /// The options that were given, as vzdump properties named as in jobs.cfg.
    /// Relative directories are made absolute.
    func properties() -> [(key: String, value: String)] {
        var p: [(String, String)] = []
        func add(_ key: String, _ value: String?) { if let value { p.append((key, value)) } }
        func path(_ v: String?) -> String? { v.map(FileManagerCWD.absoluteIfRelative) }
        if all { p.append(("all", "1")) }
        add("exclude", exclude)
        add("mode", mode)
        add("storage", storage)
        add("dumpdir", path(dumpdir))
        add("compress", compress)
        add("zstd", zstd)
        add("stopwait", stopwait)
        add("bwlimit", bwlimit)
        add("tmpdir", path(tmpdir))
        add("snapshot-fallback", snapshotFallback)
        add("lockwait", lockwait)
        if quiet { p.append(("quiet", "1")) }
        add("prune-backups", pruneBackups)
        add("remove", remove)
        add("notes-template", notesTemplate)
        add("protected", protected)
        add("script", path(script))
        add("ionice", ionice)
        add("mailto", mailto)
        add("mailnotification", mailnotification)
        add("fleecing", fleecing)
        add("pigz", pigz)
        add("performance", performance)
        if full { p.append(("full", "1")) }
        add("full-every", fullEvery)
        return p
    }

    /// Validates the options alone (selection and combination are checked
    /// where the VMIDs are known).
    func validateValues() throws {
        for (k, v) in properties() {
            do { try BackupParameters.check(key: k, value: v) } catch { throw CLIError("--\(k): \(error)") }
        }
    }
}

extension ArgumentHelp {
    /// The help of a vzdump option, from `VzdumpOption.table`, with its range.
    static func vzdump(_ key: String, _ note: String? = nil) -> ArgumentHelp {
        guard let option = VzdumpOption.named(key) else { preconditionFailure("no vzdump key '\(key)'") }
        var text = option.help
        if case .integer(let range) = option.kind { text += " Range \(range.lowerBound)-\(range.upperBound)." }
        if let note { text += " (\(note))" }
        return ArgumentHelp(text)
    }
}
