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
    public var lockwait: Int?
    public var stopwait: Int?
    public var pruneBackups: PrunePolicy?
    public var remove: Bool?
    public var notesTemplate: String?
    public var protected: Bool?
    /// `[[enabled=]<1|0>][,storage=<id>]`, as written.
    public var fleecing: String?
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

    /// Key → where it was set (`/etc/snapdump/vzdump.conf:4`, `--mode`).
    public var origins: [String: String] = [:]

    public init() {}

    /// The keys vzdump.conf accepts: Proxmox's, plus `snapshot-fallback`.
    public static let keys: [String] = [
        "bwlimit", "compress", "dumpdir", "exclude-path", "fleecing", "ionice", "lockwait", "mailnotification",
        "mailto", "mode", "notes-template", "performance", "pigz", "protected", "prune-backups", "quiet", "remove",
        "script", "snapshot-fallback", "stdexcludes", "stop", "stopwait", "storage", "tmpdir", "zstd",
    ]

    /// Sets `key` from its text form. `file`/`line` name the origin in
    /// errors: for the command line pass the option (`--mode`) and no line.
    public mutating func set(_ key: String, _ value: String, file: String, line: Int? = nil) throws(ConfigError) {
        func fail(_ message: String) -> ConfigError { ConfigError(file: file, line: line, message) }
        func int(_ range: ClosedRange<Int>) throws(ConfigError) -> Int {
            guard let n = Int(value), range.contains(n) else {
                let bound = range.upperBound == Int.max ? "an integer >= \(range.lowerBound)" : "an integer \(range.lowerBound)-\(range.upperBound)"
                throw fail("invalid value '\(value)' for \(key): expected \(bound)")
            }
            return n
        }
        func bool() throws(ConfigError) -> Bool {
            guard let b = PrunePolicy.parseBool(value) else { throw fail("invalid value '\(value)' for \(key): expected 0 or 1") }
            return b
        }
        func path() throws(ConfigError) -> String {
            guard value.hasPrefix("/") else { throw fail("invalid value '\(value)' for \(key): expected an absolute path") }
            return value
        }
        func oneOf(_ allowed: [String]) throws(ConfigError) -> String {
            guard allowed.contains(value) else {
                throw fail("invalid value '\(value)' for \(key): expected one of \(allowed.joined(separator: ", "))")
            }
            return value
        }

        switch key {
        case "mode":
            guard let m = BackupMode(rawValue: value) else { throw fail("invalid value '\(value)' for mode: expected stop, suspend or snapshot") }
            mode = m
        case "compress": compress = try oneOf(["0", "1", "gzip", "lzo", "zstd"])
        case "zstd": zstd = try int(0...Int.max)
        case "pigz": pigz = try int(0...Int.max)
        case "storage":
            guard SectionConfig.isValidID(value) else { throw fail("invalid storage id '\(value)'") }
            storage = value
        case "dumpdir": dumpdir = try path()
        case "tmpdir": tmpdir = try path()
        case "script": script = try path()
        case "bwlimit": bwlimit = try int(0...Int.max)
        case "ionice": ionice = try int(0...8)
        case "lockwait": lockwait = try int(0...Int.max)
        case "stopwait": stopwait = try int(0...Int.max)
        case "prune-backups":
            do {
                pruneBackups = try PrunePolicy(parsing: value, what: key)
            } catch {
                throw fail(error.description)
            }
        case "remove": remove = try bool()
        case "notes-template":
            if let problem = NotesTemplate.validate(value) { throw fail(problem) }
            notesTemplate = value
        case "protected": protected = try bool()
        case "fleecing": fleecing = try Self.checkFleecing(value, fail: fail)
        case "performance": performance = try Self.checkPerformance(value, fail: fail)
        case "mailto":
            let list = value.split(whereSeparator: { $0 == "," || $0 == ";" || $0 == " " || $0 == "\t" }).map(String.init)
            guard !list.isEmpty else { throw fail("invalid value '\(value)' for mailto: expected e-mail addresses") }
            mailto = list
        case "mailnotification": mailnotification = try oneOf(["always", "failure"])
        case "quiet": quiet = try bool()
        case "stop": stop = try bool()
        case "exclude-path":
            do { excludePath = try Self.splitArguments(value) } catch { throw fail("invalid value for exclude-path: \(error.message)") }
        case "stdexcludes": stdexcludes = try bool()
        case "snapshot-fallback":
            guard let f = SnapshotFallback(rawValue: value) else {
                throw fail("invalid value '\(value)' for snapshot-fallback: expected suspend or refuse")
            }
            snapshotFallback = f
        default:
            throw fail("unknown key '\(key)' (known: \(Self.keys.joined(separator: ", ")))")
        }
        origins[key] = line.map { "\(file):\($0)" } ?? file
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

    static func checkFleecing(_ value: String, fail: (String) -> ConfigError) throws(ConfigError) -> String {
        do { _ = try FleecingSettings.parse(value) } catch { throw fail("\(error)") }
        return value
    }

    static func checkPerformance(_ value: String, fail: (String) -> ConfigError) throws(ConfigError) -> String {
        let ps: PropertyString
        do { ps = try PropertyString.parse(value, what: "performance") } catch {
            throw fail("invalid value '\(value)' for performance: \(error)")
        }
        for (k, v) in ps.items {
            switch k {
            case "max-workers":
                guard let n = Int(v), (1...256).contains(n) else { throw fail("invalid value '\(v)' for performance max-workers: expected an integer 1-256") }
            case "pbs-entries-max":
                guard let n = Int(v), n >= 1 else { throw fail("invalid value '\(v)' for performance pbs-entries-max: expected an integer >= 1") }
            default:
                throw fail("unknown key '\(k)' in performance (known: max-workers, pbs-entries-max)")
            }
        }
        return value
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
