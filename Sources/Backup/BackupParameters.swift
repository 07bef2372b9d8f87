import Archive
import Foundation
import SnapdumpConfig

/// vzdump's parameters as Proxmox spells them — the keys of a `vzdump:` job in
/// jobs.cfg and the options of `snapdump backup` — and their mapping onto
/// `BackupOptions`. This is the one place that knows which keys exist, which
/// values they take and which of them the engine applies; the `backup`
/// command, `job add`/`job set` and the scheduler all go through it.
public struct BackupParameters: Sendable, Equatable {
    /// What the engine does with a key.
    public enum Support: Sendable {
        /// Mapped onto `BackupOptions` / `BackupJob`.
        case applied
        /// Accepted and validated (Proxmox has it), not applied yet: a run logs a warning.
        case notYetApplied
        /// Proxmox uses it for containers only; meaningless for VMs.
        case containersOnly
    }

    public struct Key: Sendable {
        public var name: String
        public var support: Support
        public var help: String
        let check: @Sendable (String) throws -> Void
    }

    /// Every key a `vzdump:` job may carry besides the scheduling keys.
    public static let keys: [Key] = [
        Key(name: "vmid", support: .applied, help: "VMIDs to back up, comma-separated.", check: { _ = try vmidList($0, key: "vmid") }),
        Key(name: "all", support: .applied, help: "Back up all guests (0|1).", check: { _ = try bool($0, key: "all") }),
        Key(name: "exclude", support: .applied, help: "VMIDs to leave out (implies all), comma-separated.",
            check: { _ = try vmidList($0, key: "exclude") }),
        Key(name: "mode", support: .applied, help: "stop, suspend or snapshot (default snapshot).", check: {
            guard BackupMode(rawValue: $0) != nil else { throw invalid("mode", $0, "stop, suspend or snapshot") }
        }),
        Key(name: "storage", support: .applied, help: "Backup storage (content 'backup'); default 'local'.", check: {
            guard SectionConfig.isValidID($0) else { throw invalid("storage", $0, "a storage id") }
        }),
        Key(name: "dumpdir", support: .applied, help: "Write archives to this directory instead of a storage.",
            check: { try absolutePath($0, key: "dumpdir") }),
        Key(name: "compress", support: .applied, help: "0, 1, gzip, lzo or zstd (default 0).", check: {
            _ = try BackupOptions.parseCompress($0, zstdThreads: 1)
        }),
        Key(name: "zstd", support: .applied, help: "zstd threads; 0 = half of the cores (default 1).",
            check: { _ = try integer($0, key: "zstd", 0...1024) }),
        Key(name: "stopwait", support: .applied, help: "Minutes to wait for a clean shutdown in stop mode (default 10).",
            check: { _ = try integer($0, key: "stopwait", 0...Int(Int32.max)) }),
        Key(name: "bwlimit", support: .applied, help: "Read limit in KiB/s; 0 = unlimited.",
            check: { _ = try integer($0, key: "bwlimit", 0...Int(Int32.max)) }),
        Key(name: "tmpdir", support: .applied, help: "Temporary directory (accepted for compatibility).",
            check: { try absolutePath($0, key: "tmpdir") }),
        Key(name: "snapshot-fallback", support: .applied,
            help: "When a disk cannot be snapshotted: suspend (default, as Proxmox) or refuse.", check: {
                guard SnapshotFallback(rawValue: $0) != nil else { throw invalid("snapshot-fallback", $0, "suspend or refuse") }
            }),
        Key(name: "lockwait", support: .applied, help: "Minutes to wait for the global backup lock (default 180).", check: {
            guard let v = Double($0), v >= 0, v.isFinite else { throw invalid("lockwait", $0, "minutes, 0 or more") }
        }),
        Key(name: "quiet", support: .applied, help: "Log to the .log files only (0|1).", check: { _ = try bool($0, key: "quiet") }),
        Key(name: "prune-backups", support: .applied, help: "Retention, e.g. keep-last=3,keep-daily=7 (default keep-all=1).",
            check: { try pruneBackups($0) }),
        Key(name: "remove", support: .applied, help: "Prune old backups after this one (0|1, default 1).",
            check: { _ = try bool($0, key: "remove") }),
        Key(name: "notes-template", support: .applied,
            help: "Notes for the archive; {{cluster}}, {{guestname}}, {{node}}, {{vmid}} are replaced.", check: {
                guard $0.count <= 1024 else { throw BackupError("notes-template: longer than 1024 characters") }
            }),
        Key(name: "protected", support: .applied, help: "Mark the new backup protected (0|1).",
            check: { _ = try bool($0, key: "protected") }),
        Key(name: "script", support: .applied, help: "Hook script called at each phase.",
            check: { try absolutePath($0, key: "script") }),
        Key(name: "ionice", support: .applied, help: "I/O priority 0-8 (8 = idle class, default 7).",
            check: { _ = try integer($0, key: "ionice", 0...8) }),
        Key(name: "mailto", support: .applied, help: "Mail addresses for the report, comma-separated.", check: {
            guard !$0.isEmpty else { throw invalid("mailto", $0, "mail addresses") }
        }),
        Key(name: "mailnotification", support: .applied, help: "always or failure.", check: {
            guard ["always", "failure"].contains($0) else { throw invalid("mailnotification", $0, "always or failure") }
        }),
        Key(name: "notification-mode", support: .notYetApplied, help: "auto, legacy-sendmail or notification-system.", check: {
            guard ["auto", "legacy-sendmail", "notification-system"].contains($0) else {
                throw invalid("notification-mode", $0, "auto, legacy-sendmail or notification-system")
            }
        }),
        Key(name: "pigz", support: .applied, help: "gzip threads with pigz (0 = gzip).",
            check: { _ = try integer($0, key: "pigz", 0...1024) }),
        Key(name: "fleecing", support: .applied, help: "enabled=0|1,storage=ID (copy-before-write scratch space).",
            check: { _ = try FleecingSettings.parse($0) }),
        Key(name: "performance", support: .applied, help: "max-workers=N,pbs-entries-max=N.",
            check: { try propertyString($0, key: "performance", allowed: ["max-workers": .count, "pbs-entries-max": .count]) }),
        Key(name: "maxfiles", support: .notYetApplied, help: "Deprecated: use prune-backups keep-last.",
            check: { _ = try integer($0, key: "maxfiles", 1...Int(Int32.max)) }),
        Key(name: "stdexcludes", support: .containersOnly, help: "Containers only.", check: { _ = try bool($0, key: "stdexcludes") }),
        Key(name: "exclude-path", support: .containersOnly, help: "Containers only.", check: { _ in }),
    ]

    public static let keyNames: Set<String> = Set(keys.map(\.name))

    public static func key(_ name: String) -> Key? { keys.first { $0.name == name } }

    /// The parameters, in the order given.
    public private(set) var properties: [(key: String, value: String)]

    /// Validates every key and value, and the combination: `vmid` excludes
    /// `all` and `exclude`, one of them is needed, `storage` excludes `dumpdir`.
    public init(_ properties: [(key: String, value: String)]) throws {
        var seen = Set<String>()
        for (k, v) in properties {
            guard let key = Self.key(k) else { throw BackupError("unknown backup option '\(k)'") }
            guard seen.insert(k).inserted else { throw BackupError("option '\(k)' given twice") }
            try key.check(v)
        }
        self.properties = properties
        try Self.checkCombination(self)
    }

    /// Checks one key and value alone (for errors that name a config line).
    public static func check(key: String, value: String) throws {
        guard let k = Self.key(key) else { throw BackupError("unknown backup option '\(key)'") }
        try k.check(value)
    }

    static func checkCombination(_ p: BackupParameters) throws {
        let all = p.flag("all") ?? false
        let hasVMIDs = p["vmid"] != nil
        if hasVMIDs && all { throw BackupError("options 'vmid' and 'all' are mutually exclusive") }
        if hasVMIDs && p["exclude"] != nil { throw BackupError("options 'vmid' and 'exclude' are mutually exclusive") }
        if !hasVMIDs && !all && p["exclude"] == nil { throw BackupError("no guests selected: set 'vmid', 'all' or 'exclude'") }
        if p["storage"] != nil && p["dumpdir"] != nil { throw BackupError("options 'storage' and 'dumpdir' are mutually exclusive") }
    }

    public subscript(key: String) -> String? { properties.first { $0.key == key }?.value }

    public static func == (a: BackupParameters, b: BackupParameters) -> Bool {
        a.properties.map { [$0.key, $0.value] } == b.properties.map { [$0.key, $0.value] }
    }

    func flag(_ key: String) -> Bool? { self[key].flatMap { try? Self.bool($0, key: key) } }

    /// Keys that are set but that the engine does not apply (or that concern
    /// containers only); a run warns about each. Everything vzdump.conf knows
    /// (`VzdumpValues.keys`) is applied through `BackupDefaults`.
    public var notApplied: [(key: String, value: String)] {
        properties.filter { p in
            if Self.key(p.key)?.support == .containersOnly { return true }
            return !Self.selectionKeys.contains(p.key) && !VzdumpValues.keys.contains(p.key)
        }
    }

    static let selectionKeys: Set<String> = ["vmid", "all", "exclude"]

    /// The guests these parameters select, on top of Proxmox's defaults.
    func selection() throws -> BackupOptions {
        var o = BackupOptions()
        if let v = self["vmid"] { o.vmids = try Self.vmidList(v, key: "vmid") }
        o.all = flag("all") ?? false
        if let v = self["exclude"] { o.exclude = try Self.vmidList(v, key: "exclude") }
        return o
    }

    /// Options and settings in effect: these parameters, then vzdump.conf, then
    /// the storage's prune-backups, then the defaults (`BackupDefaults`).
    public func effective(paths: SnapdumpPaths) throws -> EffectiveBackupSettings {
        var cli = VzdumpValues()
        for (k, v) in properties where VzdumpValues.keys.contains(k) && k != "lockwait" {
            do { try cli.set(k, v, file: "--\(k)") } catch { throw BackupError("\(error)") }
        }
        return try BackupDefaults.resolve(commandLine: cli, base: try selection(), paths: paths)
    }

    /// The `BackupOptions` of these parameters alone (no vzdump.conf); unset keys keep Proxmox's defaults.
    public func options() throws -> BackupOptions {
        var cli = VzdumpValues()
        for (k, v) in properties where VzdumpValues.keys.contains(k) && k != "lockwait" {
            do { try cli.set(k, v, file: "--\(k)") } catch { throw BackupError("\(error)") }
        }
        return try BackupDefaults.merge(commandLine: cli, file: VzdumpValues(), base: try selection(), storagePruneBackups: { _ in nil }).options
    }

    /// Minutes to wait for the global lock as given here (default 180; vzdump.conf may set it too).
    public var lockwait: Double { self["lockwait"].flatMap(Double.init) ?? 180 }

    /// A `BackupJob` for these parameters with vzdump.conf and storage defaults applied.
    public func makeJob(paths: SnapdumpPaths, log: TaskLog, interrupt: Interrupt) throws -> BackupJob {
        let eff = try effective(paths: paths)
        for w in eff.warnings { log.warn(w) }
        let job = BackupJob(options: eff.options, paths: paths, log: log, interrupt: interrupt)
        job.settings = eff.settings
        job.lockwait = self["lockwait"].flatMap(Double.init) ?? Double(eff.settings.lockwait)
        return job
    }

    /// Logs a warning for each key that is set but not applied.
    public func warnNotApplied(_ log: TaskLog) {
        for (k, v) in notApplied {
            if Self.key(k)?.support == .containersOnly {
                log.warn("option '\(k)' (\(v)) applies to containers only - ignored")
            } else {
                log.warn("option '\(k)' (\(v)) is not supported by snapdump yet - ignored")
            }
        }
    }

    // MARK: - Value checks

    static func invalid(_ key: String, _ value: String, _ expected: String) -> BackupError {
        BackupError("invalid value '\(value)' for '\(key)': expected \(expected)")
    }

    /// Proxmox booleans: 0/1, yes/no, on/off, true/false.
    public static func bool(_ v: String, key: String) throws -> Bool {
        switch v.lowercased() {
        case "1", "yes", "on", "true": return true
        case "0", "no", "off", "false": return false
        default: throw invalid(key, v, "0 or 1")
        }
    }

    static func integer(_ v: String, key: String, _ range: ClosedRange<Int>) throws -> Int {
        guard let n = Int(v), range.contains(n) else {
            throw invalid(key, v, range.upperBound >= Int(Int32.max) ? "an integer ≥ \(range.lowerBound)"
                          : "an integer \(range.lowerBound)-\(range.upperBound)")
        }
        return n
    }

    /// `100,101 102` → [100, 101, 102] (Proxmox accepts commas, spaces and semicolons).
    public static func vmidList(_ v: String, key: String) throws -> [Int] {
        let items = v.split(whereSeparator: { $0 == "," || $0 == " " || $0 == ";" })
        guard !items.isEmpty else { throw invalid(key, v, "VMIDs, comma-separated") }
        return try items.map { s in
            guard let n = Int(s), (100...999_999_999).contains(n) else {
                throw BackupError("invalid VMID '\(s)' in '\(key)': VMIDs are 100-999999999")
            }
            return n
        }
    }

    static func absolutePath(_ v: String, key: String) throws {
        guard v.hasPrefix("/") else { throw invalid(key, v, "an absolute path") }
    }

    static let pruneKeys = ["keep-all", "keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"]

    static func pruneBackups(_ v: String) throws {
        let p: PropertyString
        do { p = try PropertyString.parse(v, what: "prune-backups") } catch let e as ConfigError {
            throw BackupError("invalid value '\(v)' for 'prune-backups': \(e.message)")
        }
        for (k, val) in p.items {
            guard pruneKeys.contains(k) else {
                throw BackupError("invalid value '\(v)' for 'prune-backups': unknown key '\(k)' (\(pruneKeys.joined(separator: ", ")))")
            }
            if k == "keep-all" { _ = try bool(val, key: "prune-backups keep-all") } else {
                _ = try integer(val, key: "prune-backups \(k)", 0...Int(Int32.max))
            }
        }
    }

    enum PropertyKind { case bool, id, count }

    static func propertyString(_ v: String, key: String, allowed: [String: PropertyKind], defaultKey: String? = nil) throws {
        let p: PropertyString
        do { p = try PropertyString.parse(v, defaultKey: defaultKey, what: key) } catch let e as ConfigError {
            throw BackupError("invalid value '\(v)' for '\(key)': \(e.message)")
        }
        for (k, val) in p.items {
            switch allowed[k] {
            case nil: throw BackupError("invalid value '\(v)' for '\(key)': unknown key '\(k)' (\(allowed.keys.sorted().joined(separator: ", ")))")
            case .bool: _ = try bool(val, key: "\(key) \(k)")
            case .id: guard SectionConfig.isValidID(val) else { throw invalid("\(key) \(k)", val, "a storage id") }
            case .count: _ = try integer(val, key: "\(key) \(k)", 1...Int(Int32.max))
            }
        }
    }
}
