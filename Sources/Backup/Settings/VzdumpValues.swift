import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// vzdump options as given in one place — `vzdump.conf`, a backup job, or
/// the command line — each nil when not given there. Values are checked on
/// the way in; `origins` records where each key came from (`file:line` or
/// `--option`) so later errors and the log can name it.
public struct VzdumpValues: Sendable, Equatable {
    public var mode: BackupMode?
    /// `0`, `1`, `gzip`, `lzo` or `zstd`, as written.
    public var compress: String?
    public var zstd: Int?
    public var pigz: Int?
    public var storage: String?
    public var dumpdir: String?
    public var tmpdir: String?
    public var script: String?
    public var bwlimit: Int?
    public var ionice: Int?
    /// Minutes; fractions allowed.
    public var lockwait: Double?
    public var stopwait: Int?
    public var pruneBackups: PrunePolicy?
    public var remove: Bool?
    public var notesTemplate: String?
    public var protected: Bool?
    public var fleecing: FleecingSettings?
    /// `max-workers=<1-256>,pbs-entries-max=<n>`, as written.
    public var performance: String?
    public var mailto: [String]?
    public var mailnotification: String?
    public var quiet: Bool?
    public var stop: Bool?
    public var excludePath: [String]?
    public var stdexcludes: Bool?
    /// snapdump's own key: what snapshot mode does when a disk cannot be snapshotted.
    public var snapshotFallback: SnapshotFallback?
    /// snapdump's own keys: a full read into a repository now (`full`), or every Nth backup (`full-every`).
    public var full: Bool?
    public var fullEvery: Int?

    /// Key → where it was set (`/etc/snapdump/vzdump.conf:4`, `--mode`).
    public var origins: [String: String] = [:]

    public init() {}

    /// The keys vzdump.conf accepts: Proxmox's, plus `snapshot-fallback` (from `VzdumpOption.table`).
    public static var keys: [String] { VzdumpOption.vzdumpConfKeys }

    /// Sets `key` from its text form, parsed by the key's entry in
    /// `VzdumpOption.table`. `file`/`line` name the origin in errors: for the
    /// command line pass the option (`--mode`) and no line.
    public mutating func set(_ key: String, _ value: String, file: String, line: Int? = nil) throws(ConfigError) {
        func fail(_ message: String) -> ConfigError { ConfigError(file: file, line: line, message) }
        guard let option = VzdumpOption.named(key), option.inVzdumpConf else {
            throw fail("unknown key '\(key)' (known: \(Self.keys.joined(separator: ", ")))")
        }
        let v: VzdumpValue
        do { v = try option.parse(value) } catch { throw fail(error.message) }
        switch key {
        case "mode": mode = v.text.flatMap(BackupMode.init(rawValue:))
        case "compress": compress = v.text
        case "zstd": zstd = v.int
        case "pigz": pigz = v.int
        case "storage": storage = v.text
        case "dumpdir": dumpdir = v.text
        case "tmpdir": tmpdir = v.text
        case "script": script = v.text
        case "bwlimit": bwlimit = v.int
        case "ionice": ionice = v.int
        case "lockwait": lockwait = v.number
        case "stopwait": stopwait = v.int
        case "prune-backups": pruneBackups = v.prune
        case "remove": remove = v.bool
        case "notes-template": notesTemplate = v.text
        case "protected": protected = v.bool
        case "fleecing": fleecing = v.fleecing
        case "performance": performance = v.text
        case "mailto": mailto = v.list
        case "mailnotification": mailnotification = v.text
        case "quiet": quiet = v.bool
        case "stop": stop = v.bool
        case "exclude-path": excludePath = v.list
        case "stdexcludes": stdexcludes = v.bool
        case "snapshot-fallback": snapshotFallback = v.text.flatMap(SnapshotFallback.init(rawValue:))
        case "full": full = v.bool
        case "full-every": fullEvery = v.int
        default: preconditionFailure("vzdump key '\(key)' is in the table but has no field")
        }
        origins[key] = line.map { "\(file):\($0)" } ?? file
    }

    /// Every key of `VzdumpOption.table` that has a default, set to it (origin `default`).
    public static let defaults: VzdumpValues = {
        var v = VzdumpValues()
        for option in VzdumpOption.table where option.inVzdumpConf {
            guard let d = option.defaultValue else { continue }
            do { try v.set(option.name, d, file: "default") } catch { preconditionFailure("default of '\(option.name)': \(error)") }
        }
        return v
    }()

    /// A storage's `prune-backups` (storage.cfg), parsed by the same table entry as the option.
    public static func storagePruneBackups(_ raw: String, storage: String) throws(ConfigError) -> PrunePolicy {
        do {
            guard let p = try VzdumpOption.named("prune-backups")!.parse(raw).prune else { preconditionFailure("prune-backups is not a policy") }
            return p
        } catch {
            throw ConfigError(file: "storage '\(storage)'", error.message)
        }
    }

    /// Parses `vzdump.conf` text: `key: value` lines, `#` comments. Unknown
    /// keys, repeated keys and bad values are errors naming `file:line`.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> VzdumpValues {
        let kv: KeyValueConfig
        do {
            kv = try KeyValueConfig.parse(text, file: file)
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError(file: file, "\(error)")
        }
        var values = VzdumpValues()
        for e in kv.entries {
            try values.set(e.key, e.value, file: file, line: e.line)
        }
        return values
    }

    /// Reads `path` (normally `SnapdumpPaths.vzdumpConfig`); a missing file means no defaults.
    public static func load(_ path: String) throws -> VzdumpValues {
        guard FileSystem.exists(path) else { return VzdumpValues() }
        let text: String
        do { text = try FileSystem.readText(path) } catch { throw ConfigError(file: path, "cannot read: \(error)") }
        return try parse(text, file: path)
    }

    /// Shell-like word splitting (Proxmox's `split_args`): whitespace
    /// separates, single and double quotes group, backslash escapes.
    static func splitArguments(_ text: String) throws(ConfigError) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for c in text {
            if escaped { current.append(c); escaped = false; inWord = true; continue }
            if c == "\\" && quote != "'" { escaped = true; continue }
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
                continue
            }
            if c == "'" || c == "\"" { quote = c; inWord = true; continue }
            if c == " " || c == "\t" {
                if inWord { words.append(current); current = ""; inWord = false }
                continue
            }
            current.append(c)
            inWord = true
        }
        if quote != nil || escaped { throw ConfigError(file: "exclude-path", "unbalanced quotes in '\(text)'") }
        if inWord { words.append(current) }
        return words
    }
}
