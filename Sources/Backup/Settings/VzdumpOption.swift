import SnapdumpConfig

/// One vzdump key: name, value type with its range, default, and what
/// snapdump does with it. `VzdumpOption.table` is the one list of keys: the
/// command line (`backup`, `job add|set`), jobs.cfg, vzdump.conf and
/// storage.cfg's `prune-backups` all parse values through `parse`, so a
/// value accepted in one place is accepted everywhere, and every number is
/// bounded where it enters.
public struct VzdumpOption: Sendable {
    /// The value's type; integers carry their range.
    public enum Kind: Sendable {
        case boolean
        case integer(ClosedRange<Int>)
        /// A decimal number (`0.05`): `lockwait`, whose fractions tests and impatient admins use.
        case decimal(ClosedRange<Double>)
        case choice([String])
        /// `compress`: Proxmox's values, of which snapdump refuses lzo (no maintained library).
        case compression
        case absolutePath
        case storageID
        case vmidList
        case pruneBackups
        case fleecing
        case performance
        case notesTemplate
        case mailAddresses
        /// Shell-like words (`exclude-path`).
        case words
    }

    /// What the engine does with the key.
    public enum Support: Sendable, Equatable {
        /// Applied by the engine.
        case applied
        /// Accepted and checked (Proxmox has it), not applied yet: a run warns.
        case notYetApplied
        /// Proxmox uses it for containers only; a run warns.
        case containersOnly
    }

    /// A value that does not fit the key; the message names key and value.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    public let name: String
    public let kind: Kind
    /// Proxmox's default as text, nil when the key has none (unset means "not given").
    public let defaultValue: String?
    public let support: Support
    /// Why the key is deprecated (logged when it is used), nil when it is not.
    public let deprecated: String?
    /// False for the guest selection (`vmid`, `all`, `exclude`), which
    /// vzdump.conf cannot carry.
    public let inVzdumpConf: Bool
    public let help: String

    init(_ name: String, _ kind: Kind, default defaultValue: String? = nil, _ support: Support = .applied,
         deprecated: String? = nil, inVzdumpConf: Bool = true, help: String) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.support = support
        self.deprecated = deprecated
        self.inVzdumpConf = inVzdumpConf
        self.help = help
    }

    /// Upper bound of minute counts and rates: large enough for any real
    /// use, small enough that `× 60` or `× 1024` never overflows.
    static let int32 = Int(Int32.max)
    /// libzstd's most worker threads on 64-bit (ZSTDMT_NBWORKERS_MAX).
    public static let maxThreads = 256
    /// Highest `keep-*` count: the counts are summed for `remove 0`.
    public static let maxKeep = Int(Int32.max)

    /// Every key a `vzdump:` job may carry besides the scheduling keys, in Proxmox's spelling.
    public static let table: [VzdumpOption] = [
        .init("vmid", .vmidList, inVzdumpConf: false, help: "VMIDs to back up, comma-separated."),
        .init("all", .boolean, default: "0", inVzdumpConf: false, help: "Back up all guests (0|1)."),
        .init("exclude", .vmidList, inVzdumpConf: false, help: "VMIDs to leave out (implies all), comma-separated."),
        .init("mode", .choice(BackupMode.allCases.map(\.rawValue)), default: "snapshot", help: "stop, suspend or snapshot (default snapshot)."),
        .init("storage", .storageID, default: "local", help: "Backup storage (content 'backup'); default 'local'."),
        .init("dumpdir", .absolutePath, help: "Write archives to this directory instead of a storage."),
        .init("compress", .compression, default: "0", help: "0, gzip or zstd (default 0); 1 and lzo are refused (no maintained LZO library)."),
        .init("zstd", .integer(0...maxThreads), default: "1", help: "zstd threads; 0 = half of the cores (default 1)."),
        .init("pigz", .integer(0...maxThreads), default: "0", help: "gzip threads with pigz (0 = gzip)."),
        .init("stopwait", .integer(0...int32), default: "10", help: "Minutes to wait for a clean shutdown in stop mode (default 10)."),
        .init("bwlimit", .integer(0...int32), default: "0", help: "Read limit in KiB/s; 0 = unlimited."),
        .init("tmpdir", .absolutePath, help: "Temporary directory (accepted for compatibility)."),
        .init("snapshot-fallback", .choice(SnapshotFallback.allCases.map(\.rawValue)), default: "suspend",
              help: "When a disk cannot be snapshotted: suspend (default, as Proxmox) or refuse."),
        // Proxmox takes whole minutes; snapdump also takes fractions (0.05 = 3 s), in every source alike.
        .init("lockwait", .decimal(0...Double(int32)), default: "180",
              help: "Minutes to wait for the global backup lock (default 180; fractions allowed)."),
        .init("quiet", .boolean, default: "0", help: "Log to the .log files only (0|1)."),
        .init("prune-backups", .pruneBackups, default: "keep-all=1",
              help: "Retention, e.g. keep-last=3,keep-daily=7 (default keep-all=1)."),
        .init("remove", .boolean, default: "1", help: "Prune old backups after this one (0|1, default 1)."),
        .init("notes-template", .notesTemplate,
              help: "Notes for the archive; {{cluster}}, {{guestname}}, {{node}}, {{vmid}} are replaced."),
        .init("protected", .boolean, default: "0", help: "Mark the new backup protected (0|1)."),
        .init("script", .absolutePath, help: "Hook script called at each phase."),
        .init("ionice", .integer(0...8), default: "7", help: "I/O priority 0-8 (8 = idle class, default 7)."),
        .init("fleecing", .fleecing, default: "enabled=0", help: "enabled=0|1,storage=ID (copy-before-write scratch space)."),
        // snapdump's own keys (incremental forever into a repository; Proxmox has dirty bitmaps instead).
        .init("full", .boolean, default: "0",
              help: "Into a repository: read every disk whole, not only what changed since the last backup (0|1)."),
        .init("full-every", .integer(0...int32), default: "0",
              help: "Into a repository: read each disk whole on every Nth backup of it (0 = never)."),
        .init("performance", .performance, help: "max-workers=N,pbs-entries-max=N."),
        .init("mailto", .mailAddresses, help: "Mail the job's report to these addresses (sendmail), comma-separated."),
        .init("mailnotification", .choice(["always", "failure"]), default: "always",
              help: "With mailto: mail always or on failure only (default always)."),
        .init("notification-mode", .choice(["auto", "legacy-sendmail", "notification-system"]), default: "auto", .notYetApplied,
              inVzdumpConf: false, help: "auto, legacy-sendmail or notification-system."),
        .init("maxfiles", .integer(1...int32), .notYetApplied, deprecated: "use prune-backups keep-last", inVzdumpConf: false,
              help: "Deprecated: use prune-backups keep-last."),
        .init("stop", .boolean, default: "0", help: "Stop running backup jobs on this host (accepted, no effect)."),
        .init("stdexcludes", .boolean, default: "1", .containersOnly, help: "Containers only."),
        .init("exclude-path", .words, .containersOnly, help: "Containers only."),
    ]

    public static let names: Set<String> = Set(table.map(\.name))

    public static func named(_ name: String) -> VzdumpOption? { table.first { $0.name == name } }

    /// The keys vzdump.conf accepts.
    public static var vzdumpConfKeys: [String] { table.filter(\.inVzdumpConf).map(\.name).sorted() }

    /// The default as a typed value.
    public var defaultParsed: VzdumpValue? { defaultValue.flatMap { try? parse($0) } }

    // MARK: - Parsing

    /// Parses and range-checks `text` for this key.
    public func parse(_ text: String) throws(Invalid) -> VzdumpValue {
        func invalid(_ expected: String) -> Invalid { Invalid("invalid value '\(text)' for \(name): expected \(expected)") }
        if let p = ConfigValue.problem(text) { throw Invalid("invalid value for \(name): \(p)") }
        switch kind {
        case .boolean:
            guard let b = ConfigValue.bool(text) else { throw invalid("0 or 1") }
            return .bool(b)
        case .integer(let range):
            return .int(try Self.integer(text, name: name, range))
        case .decimal(let range):
            // Digits with at most one dot: no exponents, signs, `inf` or `nan`.
            guard text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), text.filter({ $0 == "." }).count <= 1,
                  let d = Double(text), d.isFinite, range.contains(d) else {
                throw invalid("a number \(Self.format(range.lowerBound))-\(Self.format(range.upperBound))")
            }
            return .number(d)
        case .choice(let allowed):
            guard allowed.contains(text) else { throw invalid(Self.list(allowed)) }
            return .text(text)
        case .compression:
            do { _ = try BackupOptions.parseCompress(text, zstdThreads: 1) } catch { throw Invalid("\(error)") }
            return .text(text)
        case .absolutePath:
            guard text.hasPrefix("/") else { throw invalid("an absolute path") }
            return .text(text)
        case .storageID:
            guard SectionConfig.isValidID(text) else { throw Invalid("invalid storage id '\(text)' for \(name)") }
            return .text(text)
        case .vmidList:
            return .vmids(try Self.vmidList(text, name: name))
        case .pruneBackups:
            do { return .prune(try PrunePolicy(parsing: text, what: name)) } catch {
                throw Invalid("invalid value '\(text)' for \(name): \(error.message)")
            }
        case .fleecing:
            return .fleecing(try FleecingSettings(parsing: text))
        case .performance:
            try Self.checkPerformance(text)
            return .text(text)
        case .notesTemplate:
            if let problem = NotesTemplate.validate(text) { throw Invalid(problem) }
            return .text(text)
        case .mailAddresses:
            let list = text.split(whereSeparator: { $0 == "," || $0 == ";" || $0 == " " }).map(String.init)
            guard !list.isEmpty else { throw invalid("e-mail addresses") }
            return .list(list)
        case .words:
            do { return .list(try VzdumpValues.splitArguments(text)) } catch {
                throw Invalid("invalid value for \(name): \(error.message)")
            }
        }
    }

    /// A decimal integer within `range`; anything else (overflow, `1e3`, `+1`) names the key and the range.
    public static func integer(_ text: String, name: String, _ range: ClosedRange<Int>) throws(Invalid) -> Int {
        guard text.first != "+", let n = Int(text), range.contains(n) else {
            throw Invalid("invalid value '\(text)' for \(name): expected an integer \(range.lowerBound)-\(range.upperBound)")
        }
        return n
    }

    /// `100,101 102` → [100, 101, 102] (Proxmox accepts commas, spaces and semicolons).
    public static func vmidList(_ text: String, name: String) throws(Invalid) -> [Int] {
        let items = text.split(whereSeparator: { $0 == "," || $0 == " " || $0 == ";" })
        guard !items.isEmpty else { throw Invalid("invalid value '\(text)' for \(name): expected VMIDs, comma-separated") }
        var out: [Int] = []
        for s in items {
            guard let n = Int(s), (100...999_999_999).contains(n) else {
                throw Invalid("invalid VMID '\(s)' in '\(name)': VMIDs are 100-999999999")
            }
            out.append(n)
        }
        return out
    }

    static func checkPerformance(_ text: String) throws(Invalid) {
        let ps: PropertyString
        do { ps = try PropertyString.parse(text, what: "performance") } catch {
            throw Invalid("invalid value '\(text)' for performance: \((error as? ConfigError)?.message ?? "\(error)")")
        }
        for (k, v) in ps.items {
            switch k {
            case "max-workers": _ = try integer(v, name: "performance max-workers", 1...256)
            case "pbs-entries-max": _ = try integer(v, name: "performance pbs-entries-max", 1...int32)
            default: throw Invalid("unknown key '\(k)' in performance (known: max-workers, pbs-entries-max)")
            }
        }
    }

    static func format(_ d: Double) -> String { d == d.rounded() ? String(Int(d)) : String(d) }

    static func list(_ words: [String]) -> String {
        words.count <= 1 ? words.joined() : words.dropLast().joined(separator: ", ") + " or " + words.last!
    }
}

/// A vzdump value after parsing, typed by its key's kind.
public enum VzdumpValue: Sendable, Equatable {
    case bool(Bool)
    case int(Int)
    case number(Double)
    case text(String)
    case vmids([Int])
    case prune(PrunePolicy)
    case fleecing(FleecingSettings)
    case list([String])

    public var bool: Bool? { if case .bool(let v) = self { return v } else { return nil } }
    public var int: Int? { if case .int(let v) = self { return v } else { return nil } }
    public var number: Double? { if case .number(let v) = self { return v } else { return nil } }
    public var text: String? { if case .text(let v) = self { return v } else { return nil } }
    public var vmids: [Int]? { if case .vmids(let v) = self { return v } else { return nil } }
    public var prune: PrunePolicy? { if case .prune(let v) = self { return v } else { return nil } }
    public var fleecing: FleecingSettings? { if case .fleecing(let v) = self { return v } else { return nil } }
    public var list: [String]? { if case .list(let v) = self { return v } else { return nil } }
}
