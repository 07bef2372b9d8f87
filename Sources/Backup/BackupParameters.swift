import Archive
import Foundation
import SnapdumpConfig

/// vzdump's parameters as Proxmox spells them — the keys of a `vzdump:` job
/// in jobs.cfg and the options of `snapdump backup` — checked against
/// `VzdumpOption.table` and resolved into `BackupOptions` with vzdump.conf
/// and the storage's retention. The `backup` command, `job add`/`job set`,
/// `job run` and the scheduler all go through it.
public struct BackupParameters: Sendable, Equatable {
    public static var keyNames: Set<String> { VzdumpOption.names }

    public static func key(_ name: String) -> VzdumpOption? { VzdumpOption.named(name) }

    /// The parameters, in the order given.
    public private(set) var properties: [(key: String, value: String)]

    /// Validates every key and value, and the combination: `vmid` excludes
    /// `all` and `exclude`, one of them is needed, `storage` excludes `dumpdir`.
    public init(_ properties: [(key: String, value: String)]) throws {
        var seen = Set<String>()
        for (k, v) in properties {
            guard seen.insert(k).inserted else { throw BackupError("option '\(k)' given twice") }
            try Self.check(key: k, value: v)
        }
        self.properties = properties
        try Self.checkCombination(self)
    }

    /// Checks one key and value alone (for errors that name a config line or option).
    public static func check(key: String, value: String) throws {
        guard let option = VzdumpOption.named(key) else { throw BackupError("unknown backup option '\(key)'") }
        do { _ = try option.parse(value) } catch { throw BackupError(error.message) }
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

    func flag(_ key: String) -> Bool? { self[key].flatMap(ConfigValue.bool) }

    /// Keys that are set but that the engine does not apply (or that concern
    /// containers only); a run warns about each.
    public var notApplied: [(key: String, value: String)] {
        properties.filter { VzdumpOption.named($0.key)?.support != .applied }
    }

    /// The guests these parameters select, on top of Proxmox's defaults.
    func selection() throws -> BackupOptions {
        var o = BackupOptions()
        if let v = self["vmid"] { o.vmids = try Self.vmidList(v, key: "vmid") }
        o.all = flag("all") ?? false
        if let v = self["exclude"] { o.exclude = try Self.vmidList(v, key: "exclude") }
        return o
    }

    /// These parameters as the command-line layer of vzdump's precedence.
    func commandLine() throws -> VzdumpValues {
        var cli = VzdumpValues()
        for (k, v) in properties where VzdumpOption.named(k)?.inVzdumpConf == true {
            do { try cli.set(k, v, file: "--\(k)") } catch { throw BackupError("\(error)") }
        }
        return cli
    }

    /// Options and settings in effect: these parameters, then vzdump.conf, then
    /// the storage's prune-backups, then the defaults of `VzdumpOption.table`.
    public func effective(paths: SnapdumpPaths) throws -> EffectiveBackupSettings {
        try BackupDefaults.resolve(commandLine: try commandLine(), base: try selection(), paths: paths)
    }

    /// `effective(paths:)` with vzdump.conf and storage retention given (for tests and tools).
    public func effective(vzdumpConf: VzdumpValues,
                          storagePruneBackups: (String) throws -> String? = { _ in nil }) throws -> EffectiveBackupSettings {
        try BackupDefaults.merge(commandLine: try commandLine(), file: vzdumpConf, base: try selection(),
                                 storagePruneBackups: storagePruneBackups)
    }

    /// A `BackupJob` for these parameters with vzdump.conf and storage defaults applied.
    /// `effective`, when the caller already resolved it (to know `quiet` before the log exists), is used as is.
    public func makeJob(paths: SnapdumpPaths, log: TaskLog, interrupt: Interrupt,
                        effective resolved: EffectiveBackupSettings? = nil) throws -> BackupJob {
        let eff = try resolved ?? effective(paths: paths)
        for w in eff.warnings { log.warn(w) }
        let job = BackupJob(options: eff.options, paths: paths, log: log, interrupt: interrupt)
        job.settings = eff.settings
        job.lockwait = eff.settings.lockwait
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

    /// Proxmox booleans: 0/1, yes/no, on/off, true/false.
    public static func bool(_ v: String, key: String) throws -> Bool {
        guard let b = ConfigValue.bool(v) else { throw BackupError("invalid value '\(v)' for \(key): expected 0 or 1") }
        return b
    }

    /// `100,101 102` → [100, 101, 102] (Proxmox accepts commas, spaces and semicolons).
    public static func vmidList(_ v: String, key: String) throws -> [Int] {
        do { return try VzdumpOption.vmidList(v, name: key) } catch { throw BackupError(error.message) }
    }
}
