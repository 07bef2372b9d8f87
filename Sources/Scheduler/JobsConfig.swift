import Backup
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// One `vzdump: <id>` section of jobs.cfg: when to run, and the backup
/// options (vzdump's keys, checked by `BackupParameters`).
///
///     vzdump: backup-07cdf241-8b56
///     	schedule sat 02:00
///     	all 1
///     	mode snapshot
///     	storage local
///     	enabled 1
public struct BackupJobDefinition: Sendable, Equatable {
    public var id: String
    public var schedule: CalendarEvent
    public var enabled: Bool
    public var comment: String?
    /// Run once at start-up when an event was missed while the scheduler was down.
    public var repeatMissed: Bool
    /// Proxmox's node restriction: the job runs only on the host of that name.
    public var node: String?
    public var parameters: BackupParameters
    /// Line of the section header in jobs.cfg (0 for a job not read from a file).
    public var line: Int

    /// The scheduling keys; every other key is a backup option.
    public static let schedulingKeys: Set<String> = ["schedule", "enabled", "comment", "repeat-missed", "node"]
    public static let sectionType = "vzdump"

    /// Builds and checks a job from its section. `lineOf` gives a key's line
    /// for errors; without it errors name the section header's line.
    public init(section: SectionConfig.Section, file: String, lineOf: (String) -> Int? = { _ in nil }) throws {
        func fail(_ key: String?, _ message: String) -> ConfigError {
            ConfigError(file: file, line: key.flatMap(lineOf) ?? section.line, message)
        }
        guard section.type == Self.sectionType else {
            throw fail(nil, "unknown job type '\(section.type)' (only '\(Self.sectionType)' jobs exist)")
        }
        id = section.id
        line = section.line
        guard let text = section["schedule"], !text.isEmpty else {
            throw fail(nil, "job '\(section.id)' has no 'schedule'")
        }
        do { schedule = try CalendarEvent(text) } catch let e as CalendarEventError {
            throw fail("schedule", "job '\(section.id)': \(e)")
        }
        func bool(_ key: String, default d: Bool) throws -> Bool {
            guard let v = section[key] else { return d }
            do { return try BackupParameters.bool(v, key: key) } catch { throw fail(key, "job '\(section.id)': \(error)") }
        }
        enabled = try bool("enabled", default: true)
        repeatMissed = try bool("repeat-missed", default: false)
        comment = section["comment"]
        node = section["node"]
        var props: [(key: String, value: String)] = []
        for p in section.properties where !Self.schedulingKeys.contains(p.key) {
            do { try BackupParameters.check(key: p.key, value: p.value) } catch {
                throw fail(p.key, "job '\(section.id)': \(error)")
            }
            props.append(p)
        }
        do { parameters = try BackupParameters(props) } catch { throw fail(nil, "job '\(section.id)': \(error)") }
    }

    /// The section as jobs.cfg stores it: scheduling keys first, then options.
    public var section: SectionConfig.Section {
        var s = SectionConfig.Section(type: Self.sectionType, id: id, line: line)
        s["schedule"] = schedule.text
        if !enabled { s["enabled"] = "0" }
        s["comment"] = comment
        if repeatMissed { s["repeat-missed"] = "1" }
        s["node"] = node
        for p in parameters.properties { s[p.key] = p.value }
        return s
    }

    public static func == (a: BackupJobDefinition, b: BackupJobDefinition) -> Bool {
        a.section == b.section
    }

    /// `backup-` and 12 random hex digits, as `job add` names jobs.
    public static func generateID() -> String {
        var g = SystemRandomNumberGenerator()
        return "backup-" + (0..<12).map { _ in String(UInt8.random(in: 0...15, using: &g), radix: 16) }.joined()
    }

    /// Job ids: a letter, then letters, digits, `-`, `_` (Proxmox's job id rule).
    public static func isValidID(_ id: String) -> Bool {
        guard let f = id.first, f.isASCII, f.isLetter, id.count <= 64 else { return false }
        return id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }
}

/// `<config-dir>/jobs.cfg`: the backup jobs, in Proxmox's section format.
/// Every job is checked when the file is read; a bad line is an error naming
/// the file and line. Edits keep the order and spelling of untouched lines.
public struct JobsConfig: Sendable, Equatable {
    public var file: String
    public private(set) var config: SectionConfig
    public private(set) var jobs: [BackupJobDefinition]

    public static var schema: SectionConfig.Schema {
        [BackupJobDefinition.sectionType: BackupJobDefinition.schedulingKeys.union(BackupParameters.keyNames)]
    }

    public init(file: String, config: SectionConfig = SectionConfig()) throws {
        self.file = file
        self.config = config
        jobs = try config.sections.map { try BackupJobDefinition(section: $0, file: file) }
    }

    /// Parses and checks `text`.
    public static func parse(_ text: String, file: String) throws -> JobsConfig {
        let config = try SectionConfig.parse(text, file: file, schema: schema, validID: BackupJobDefinition.isValidID)
        let lines = propertyLines(text)
        var result = try JobsConfig(file: file, config: SectionConfig())
        result.config = config
        result.jobs = try config.sections.map { s in
            try BackupJobDefinition(section: s, file: file, lineOf: { lines[s.line]?[$0] })
        }
        return result
    }

    /// Reads jobs.cfg; a missing file is an empty configuration.
    public static func load(paths: SnapdumpPaths) throws -> JobsConfig {
        let path = paths.jobsConfig
        guard FileSystem.exists(path) else { return try JobsConfig(file: path) }
        let text: String
        do { text = try FileSystem.readText(path) } catch { throw ConfigError(file: path, "cannot read: \(error)") }
        return try parse(text, file: path)
    }

    public func job(_ id: String) -> BackupJobDefinition? { jobs.first { $0.id == id } }

    /// Adds a new job; its id must be unused.
    public mutating func add(_ job: BackupJobDefinition) throws {
        guard self.job(job.id) == nil else { throw ConfigError(file: file, "job '\(job.id)' already exists") }
        var j = job
        j.line = 0
        config.sections.append(j.section)
        jobs.append(j)
    }

    /// Changes `id`'s keys: `set` values replace or add keys in place,
    /// `delete` removes keys. The result is checked as a whole.
    public mutating func update(_ id: String, set: [(key: String, value: String)], delete: [String]) throws {
        guard let i = config.sections.firstIndex(where: { $0.id == id }) else {
            throw ConfigError(file: file, "no job '\(id)' in \(file)")
        }
        var s = config.sections[i]
        for k in delete {
            guard JobsConfig.schema[BackupJobDefinition.sectionType]!.contains(k) else {
                throw ConfigError(file: file, "cannot delete unknown key '\(k)'")
            }
            if k == "schedule" { throw ConfigError(file: file, "'schedule' cannot be deleted; set another one") }
            s[k] = nil
        }
        for (k, v) in set { s[k] = v }
        let job = try BackupJobDefinition(section: s, file: file)
        config.sections[i] = s
        jobs[i] = job
    }

    public mutating func remove(_ id: String) throws {
        guard let i = config.sections.firstIndex(where: { $0.id == id }) else {
            throw ConfigError(file: file, "no job '\(id)' in \(file)")
        }
        config.sections.remove(at: i)
        jobs.remove(at: i)
    }

    /// `vm destroy --purge`, as Proxmox: the VMID leaves every job's `vmid`
    /// and `exclude` list; a job whose `vmid` list becomes empty is removed.
    /// Returns what changed, one line per job.
    public mutating func purge(vmid: Int) throws -> [String] {
        var changes: [String] = []
        for job in jobs {
            var set: [(key: String, value: String)] = []
            var delete: [String] = []
            for key in ["vmid", "exclude"] {
                guard let list = job.parameters[key] else { continue }
                let ids = try BackupParameters.vmidList(list, key: key)
                guard ids.contains(vmid) else { continue }
                let rest = ids.filter { $0 != vmid }
                if rest.isEmpty { delete.append(key) } else { set.append((key, rest.map(String.init).joined(separator: ","))) }
            }
            // `exclude` implies `all`; without it the job still means all guests.
            if delete.contains("exclude") && job.parameters["vmid"] == nil { set.append(("all", "1")) }
            if delete.contains("vmid") {
                try remove(job.id)
                changes.append("removed backup job '\(job.id)' (it backed up only VM \(vmid))")
            } else if !set.isEmpty || !delete.isEmpty {
                try update(job.id, set: set, delete: delete)
                changes.append("removed VM \(vmid) from backup job '\(job.id)'")
            }
        }
        return changes
    }

    /// Writes the file atomically.
    public func save() throws {
        try config.validate(file: file, validID: BackupJobDefinition.isValidID)
        try FileSystem.createDirectory((file as NSString).deletingLastPathComponent)
        try FileSystem.writeAtomically(file, config.serialized())
    }

    /// Loads, edits and saves jobs.cfg under a lock, so two `job` commands
    /// never lose each other's edits.
    public static func edit<T>(paths: SnapdumpPaths, _ body: (inout JobsConfig) throws -> T) throws -> T {
        let lock = try FileLock.acquire(paths.runDir + "/lock/jobs.cfg.lock", timeout: 10)
        defer { lock.unlock() }
        var cfg = try load(paths: paths)
        let result = try body(&cfg)
        try cfg.save()
        return result
    }

    /// For each section header line, the line of each key in that section.
    static func propertyLines(_ text: String) -> [Int: [String: Int]] {
        var out: [Int: [String: Int]] = [:]
        var header: Int?
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let n = i + 1
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { header = nil; continue }
            if trimmed.hasPrefix("#") { continue }
            if raw.first == " " || raw.first == "\t" {
                if let h = header, let key = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).first {
                    out[h, default: [:]][String(key)] = out[h]?[String(key)] ?? n
                }
            } else {
                header = n
            }
        }
        return out
    }
}
