import ArgumentParser
import Backup

/// The vzdump options shared by `backup`, `job add` and `job set`. Values stay
/// strings here: `VzdumpOption.table` (in Backup) parses and range-checks
/// them, so the command line, jobs.cfg and vzdump.conf accept exactly the
/// same things. `--all` and `--quiet` also take Proxmox's `--all 1` form
/// (`ProxmoxArguments`).
struct BackupOptionArguments: ParsableArguments {
    @Flag(help: "Back up all guests (also --all 1).") var all = false
    @Option(help: "Exclude these VMIDs (implies --all), comma-separated.") var exclude: String?
    @Option(help: "stop, suspend or snapshot (default snapshot).") var mode: String?
    @Option(help: "Backup storage (content 'backup'); default 'local'.") var storage: String?
    @Option(help: "Write archives to this directory instead of a storage.") var dumpdir: String?
    @Option(help: "0, 1, gzip, lzo or zstd (default 0).") var compress: String?
    @Option(help: "zstd threads; 0 = half of the cores (default 1).") var zstd: String?
    @Option(help: "Minutes to wait for a clean shutdown in stop mode (default 10).") var stopwait: String?
    @Option(help: "Read limit in KiB/s; 0 = unlimited.") var bwlimit: String?
    @Option(help: "Temporary directory (accepted for compatibility).") var tmpdir: String?
    @Option(name: .customLong("snapshot-fallback"), help: "When a disk cannot be snapshotted: suspend (default, as Proxmox) or refuse.")
    var snapshotFallback: String?
    @Option(help: "Minutes to wait for the global backup lock (default 180).") var lockwait: String?
    @Flag(help: "Be quiet: log to the .log files only (also --quiet 1).") var quiet = false
    @Option(name: .customLong("prune-backups"), help: "Retention, e.g. keep-last=3,keep-daily=7.")
    var pruneBackups: String?
    @Option(help: "Prune old backups after this one: 0 or 1.") var remove: String?
    @Option(name: .customLong("notes-template"), help: "Notes template, {{vmid}}, {{guestname}}….")
    var notesTemplate: String?
    @Option(help: "1 marks the new backup protected.") var protected: String?
    @Option(help: "Hook script.") var script: String?
    @Option(help: "I/O priority 0-8.") var ionice: String?
    @Option(help: "Mail the report to these addresses.") var mailto: String?
    @Option(help: "always or failure.") var mailnotification: String?
    @Option(help: "enabled=0|1,storage=ID: copy-before-write scratch space.") var fleecing: String?
    @Option(help: "gzip threads with pigz (accepted; snapdump compresses gzip with zlib).") var pigz: String?
    @Option(help: "max-workers=N,pbs-entries-max=N (accepted for compatibility).") var performance: String?

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
