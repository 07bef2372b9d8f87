import Archive
import Foundation
import SnapdumpConfig
import Storage

/// The backup options that `BackupOptions` does not carry: retention,
/// notes, protection, hook script, lock wait, and the options snapdump
/// accepts for compatibility. Defaults are vzdump's.
public struct BackupSettings: Sendable, Equatable {
    /// Retention applied after each successful backup (when `remove`).
    public var pruneBackups: PrunePolicy = .keepEverything
    /// Where the retention came from, for the log: `--prune-backups`,
    /// `/etc/snapdump/vzdump.conf:3`, `storage 'local'` or `default`.
    public var pruneBackupsOrigin = "default"
    /// Prune after a successful backup. Always false when the retention keeps everything.
    public var remove = true
    public var notesTemplate: String?
    /// Mark the new backup protected.
    public var protected = false
    /// Hook script (`script <phase> [<mode> <vmid>]`).
    public var script: String?
    /// Minutes to wait for the global backup lock.
    public var lockwait: Double = 180
    /// ionice priority 0–8 (8 = idle class).
    public var ionice = 7
    /// vzdump's mail: the job's report to these addresses through the host's sendmail
    /// (`always`, or on `failure` only); without it, notifications.cfg's matchers decide.
    public var mailto: [String] = []
    public var mailnotification = "always"
    /// Accepted for compatibility; snapdump's gzip is zlib on the calling thread.
    public var pigz = 0
    public var performance: String?
    /// Containers only in Proxmox; accepted and ignored for VMs.
    public var excludePath: [String] = []
    public var stdexcludes = true
    public var stop = false

    public init() {}
}

/// The options of one backup run after applying the precedence.
public struct EffectiveBackupSettings: Sendable {
    public var options: BackupOptions
    public var settings: BackupSettings
    /// For the job log (`WARN: …`): deprecated or ignored options, conflicts resolved.
    public var warnings: [String]
}

/// vzdump's option precedence: command line (or job) → vzdump.conf → the
/// backup storage's `prune-backups` (retention only) → built-in defaults.
public enum BackupDefaults {
    /// Merges `commandLine` (only the options given explicitly) over `file`
    /// (vzdump.conf) over the defaults. `base` supplies what only the command
    /// line has (VMIDs, `--all`, `--exclude`, zstd level); its other fields
    /// are replaced. `storagePruneBackups` returns a storage's raw
    /// `prune-backups`; it is asked only when neither the command line nor
    /// vzdump.conf sets a retention and the target is a storage.
    ///
    /// `storage` and `dumpdir` come as a pair: from the command line if it
    /// names either, else from vzdump.conf (both there: `dumpdir` is ignored
    /// with a warning, as Proxmox); with neither the storage is `local`.
    public static func merge(commandLine cli: VzdumpValues, file: VzdumpValues, base: BackupOptions = BackupOptions(),
                             storagePruneBackups: (String) throws -> String?) throws -> EffectiveBackupSettings {
        var warnings: [String] = []
        var o = base
        var s = BackupSettings()
        let defaults = VzdumpValues.defaults

        func pick<T>(_ key: String, _ path: KeyPath<VzdumpValues, T?>) -> (value: T, origin: String)? {
            if let v = cli[keyPath: path] { return (v, cli.origins[key] ?? "command line") }
            if let v = file[keyPath: path] { return (v, file.origins[key] ?? "vzdump.conf") }
            return nil
        }
        /// A key with a default in `VzdumpOption.table`: given, or that default.
        func value<T>(_ key: String, _ path: KeyPath<VzdumpValues, T?>) -> T {
            guard let v = pick(key, path)?.value ?? defaults[keyPath: path] else {
                preconditionFailure("vzdump key '\(key)' has no default in VzdumpOption.table")
            }
            return v
        }

        o.mode = value("mode", \.mode)
        o.snapshotFallback = value("snapshot-fallback", \.snapshotFallback)
        o.zstdThreads = value("zstd", \.zstd)
        let compress = pick("compress", \.compress) ?? (value("compress", \.compress), "default")
        do {
            o.compression = try BackupOptions.parseCompress(compress.value, zstdThreads: o.zstdThreads, level: base.zstdLevel)
        } catch {
            throw BackupError("\(compress.origin): \(error)")
        }
        o.stopwait = value("stopwait", \.stopwait)
        o.bwlimit = value("bwlimit", \.bwlimit)
        o.tmpdir = pick("tmpdir", \.tmpdir)?.value
        o.quiet = value("quiet", \.quiet)
        o.fleecing = value("fleecing", \.fleecing)
        o.full = value("full", \.full)
        o.fullEvery = value("full-every", \.fullEvery)

        // Target, decided once: storage and dumpdir travel together.
        if cli.storage != nil || cli.dumpdir != nil {
            if cli.storage != nil && cli.dumpdir != nil {
                throw BackupError("cannot use options 'storage' and 'dumpdir' at the same time")
            }
            o.target = cli.storage.map(BackupTarget.storage) ?? .dumpdir(cli.dumpdir!)
        } else if let st = file.storage {
            if file.dumpdir != nil {
                warnings.append("both 'storage' and 'dumpdir' defined in '\(file.origins["dumpdir"] ?? "vzdump.conf")' - ignoring 'dumpdir'")
            }
            o.target = .storage(st)
        } else if let d = file.dumpdir {
            o.target = .dumpdir(d)
        } else {
            o.target = .storage(value("storage", \.storage))
        }

        // Retention: command line → vzdump.conf → storage → keep everything.
        if let p = pick("prune-backups", \.pruneBackups) {
            s.pruneBackups = p.value
            s.pruneBackupsOrigin = p.origin
        } else if let st = o.target.storageID, let raw = try storagePruneBackups(st) {
            do {
                s.pruneBackups = try VzdumpValues.storagePruneBackups(raw, storage: st)
            } catch {
                throw BackupError(error.description)
            }
            s.pruneBackupsOrigin = "storage '\(st)'"
        } else {
            s.pruneBackups = value("prune-backups", \.pruneBackups)
        }
        s.remove = value("remove", \.remove)
        // As vzdump: keep-all never triggers the remove code path.
        if s.pruneBackups.keepsEverything { s.remove = false }

        s.notesTemplate = pick("notes-template", \.notesTemplate)?.value
        if s.notesTemplate?.isEmpty == true { s.notesTemplate = nil }
        s.protected = value("protected", \.protected)
        s.script = pick("script", \.script)?.value
        s.lockwait = value("lockwait", \.lockwait)
        s.ionice = value("ionice", \.ionice)
        s.pigz = value("pigz", \.pigz)
        s.performance = pick("performance", \.performance)?.value
        s.stop = value("stop", \.stop)
        s.stdexcludes = value("stdexcludes", \.stdexcludes)
        // exclude-path adds up, as in vzdump.
        s.excludePath = (file.excludePath ?? []) + (cli.excludePath ?? [])

        if let m = pick("mailto", \.mailto) { s.mailto = m.value }
        s.mailnotification = value("mailnotification", \.mailnotification)
        // Deprecated keys that were given, each with the table's reason.
        for option in VzdumpOption.table {
            guard let reason = option.deprecated, let origin = cli.origins[option.name] ?? file.origins[option.name] else { continue }
            warnings.append("option '\(option.name)' (\(origin)) is deprecated and ignored: \(reason)")
        }
        if s.pigz > 0 && o.compression.kind == .gzip {
            warnings.append("option 'pigz' is ignored: snapdump compresses gzip with zlib")
        }
        return EffectiveBackupSettings(options: o, settings: s, warnings: warnings)
    }

    /// `merge` with vzdump.conf read from `paths.vzdumpConfig` and storage
    /// retention from storage.cfg: the one call the backup command makes
    /// before creating the job.
    public static func resolve(commandLine: VzdumpValues, base: BackupOptions, paths: SnapdumpPaths) throws -> EffectiveBackupSettings {
        let file = try VzdumpValues.load(paths.vzdumpConfig)
        return try merge(commandLine: commandLine, file: file, base: base) { id in
            try StorageRegistry(paths: paths).config.storage(id).pruneBackups
        }
    }
}
