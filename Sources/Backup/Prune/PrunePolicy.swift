import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// Proxmox's backup retention (`prune-backups`): `keep-all`, or any of
/// `keep-last`, `keep-hourly`, `keep-daily`, `keep-weekly`, `keep-monthly`,
/// `keep-yearly`, written as a property string `keep-last=3,keep-daily=7`.
///
/// Options that were set are remembered even when 0, because vzdump logs the
/// retention as given ("prune older backups with retention: keep-daily=0, keep-last=3").
public struct PrunePolicy: Hashable, Sendable, CustomStringConvertible {
    /// The keep options in the order the algorithm applies them.
    public enum Option: String, CaseIterable, Sendable {
        case last = "keep-last"
        case hourly = "keep-hourly"
        case daily = "keep-daily"
        case weekly = "keep-weekly"
        case monthly = "keep-monthly"
        case yearly = "keep-yearly"
    }

    /// `keep-all=1` as written (nil: not given).
    public var keepAll: Bool?
    /// The counts that were given, 0 included.
    public private(set) var counts: [Option: Int] = [:]

    public init(keepAll: Bool? = nil, _ counts: [Option: Int] = [:]) {
        self.keepAll = keepAll
        self.counts = counts
    }

    /// vzdump's built-in default: keep everything.
    public static let keepEverything = PrunePolicy(keepAll: true)

    public subscript(option: Option) -> Int? {
        get { counts[option] }
        set { counts[option] = newValue }
    }

    /// True when nothing is ever pruned: `keep-all=1`, or no count above 0
    /// (Proxmox treats an empty or all-zero retention as keep-all).
    public var keepsEverything: Bool {
        keepAll == true || !counts.values.contains { $0 > 0 }
    }

    /// vzdump's "max backup limit" for `remove 0`: the sum of the keep
    /// values, 0 when everything is kept (no limit).
    public var backupLimit: Int {
        keepsEverything ? 0 : counts.values.reduce(0, +)
    }

    /// Removes every item marked `remove`, logging "removing backup '…'" for
    /// each (and the warnings a removal returns). A removal that fails is
    /// logged and the others still run; then it throws "error pruning
    /// backups - check log", as Proxmox does. Dump directories and
    /// repositories prune through this.
    public static func removeMarked<Item>(_ items: [(item: Item, mark: PruneMark)], label: (Item) -> String,
                                          remove: (Item) throws -> [String],
                                          log: (TaskLog.Level, String) -> Void) throws {
        var failed = false
        for (item, mark) in items where mark == .remove {
            log(.info, "removing backup '\(label(item))'")
            do {
                for w in try remove(item) { log(.warn, w) }
            } catch {
                log(.error, "error when removing backup '\(label(item))' - \(error)")
                failed = true
            }
        }
        if failed { throw BackupError("error pruning backups - check log") }
    }

    /// vzdump's check before a backup with `remove 0`: with a finite
    /// retention, refuse when the guest's unprotected backups already reach
    /// `backupLimit`. A backup that will be protected is never refused (it
    /// does not count against the retention). `unprotectedCount` is asked
    /// only when the check applies (it lists the target).
    public func checkBackupLimit(remove: Bool, protected: Bool, unprotectedCount: () throws -> Int) throws {
        let limit = backupLimit
        guard limit > 0, !remove, !protected else { return }
        if try unprotectedCount() >= limit {
            throw BackupError("There is a max backup limit of \(limit) enforced by the target storage or the vzdump parameters. "
                              + "Either increase the limit or delete old backups.")
        }
    }

    /// The property string with keys sorted: `keep-daily=7,keep-last=3`.
    public var propertyString: String {
        var items: [(String, String)] = counts.map { ($0.key.rawValue, String($0.value)) }
        if let keepAll { items.append(("keep-all", keepAll ? "1" : "0")) }
        if items.isEmpty { return "keep-all=1" }
        return items.sorted { $0.0 < $1.0 }.map { "\($0)=\($1)" }.joined(separator: ",")
    }

    /// As vzdump logs it: `keep-daily=7, keep-last=3`.
    public var description: String {
        propertyString.replacingOccurrences(of: ",", with: ", ")
    }

    /// Parses a `prune-backups` property string. `what` names its origin in
    /// errors (`vzdump.conf:4`, `--prune-backups`, `storage 'local'`). An
    /// empty string, like an all-zero one, keeps everything.
    public init(parsing text: String, what: String = "prune-backups") throws(ConfigError) {
        self.init()
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { keepAll = true; return }
        let ps: PropertyString
        do {
            ps = try PropertyString.parse(trimmed, what: what)
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError(file: what, "\(error)")
        }
        for (key, value) in ps.items {
            if key == "keep-all" {
                guard let b = ConfigValue.bool(value) else {
                    throw ConfigError(file: what, "invalid value '\(value)' for keep-all: expected 0 or 1")
                }
                keepAll = b
                continue
            }
            guard let option = Option(rawValue: key) else {
                let known = (["keep-all"] + Option.allCases.map(\.rawValue)).joined(separator: ", ")
                throw ConfigError(file: what, "unknown key '\(key)' (known: \(known))")
            }
            // Bounded: the counts are summed for `remove 0` (`backupLimit`).
            guard value.first != "+", let n = Int(value), (0...VzdumpOption.maxKeep).contains(n) else {
                throw ConfigError(file: what, "invalid value '\(value)' for \(key): expected an integer 0-\(VzdumpOption.maxKeep)")
            }
            counts[option] = n
        }
        if keepAll == true && counts.values.contains(where: { $0 > 0 }) {
            throw ConfigError(file: what, "keep-all cannot be set together with other options")
        }
    }
}

/// What prune does with one backup.
public enum PruneMark: String, Sendable, CaseIterable {
    case keep, remove, protected
    /// Not a standard archive name: never touched.
    case renamed
}

extension PrunePolicy {
    /// One backup of a group, as the algorithm sees it.
    public struct Entry: Sendable {
        /// The backup time (from the archive name).
        public var date: Date
        public var isProtected: Bool

        public init(date: Date, isProtected: Bool = false) {
            self.date = date
            self.isProtected = isProtected
        }
    }

    /// Proxmox's `prune_mark_backup_group` for the backups of one guest
    /// (standard names only). Returns one mark per entry, in the order given.
    ///
    /// - With keep-all, or no count > 0, everything is kept (protected stays protected).
    /// - Otherwise the backups, newest first, go through keep-last, -hourly,
    ///   -daily, -weekly (ISO week and year), -monthly, -yearly in that order,
    ///   with periods in `timeZone` (nil: local time as the C library reads
    ///   `TZ` and /etc/localtime, as vzdump's Perl `localtime`). In each pass,
    ///   backups already marked and periods already held by a kept backup are
    ///   skipped; the first backup of a new period is kept until N new periods
    ///   are taken (the pass stops at the next new period); later backups in a
    ///   period taken in this pass are marked remove.
    /// - What is left unmarked is removed. Protected backups are marked
    ///   `protected` up front, so they neither hold a period nor count.
    ///
    /// Entries with the same time keep their relative order (a stable sort,
    /// as Perl's); keep-last counts them as one period, as Proxmox does.
    public func mark(_ entries: [Entry], timeZone: TimeZone? = nil) -> [PruneMark] {
        var marks: [PruneMark?] = entries.map { $0.isProtected ? .protected : nil }
        if keepsEverything {
            return marks.map { $0 ?? .keep }
        }
        // Newest first; ties keep the input order.
        let order = entries.indices.sorted { a, b in
            let da = entries[a].date, db = entries[b].date
            return da != db ? da > db : a < b
        }
        let zone = CivilTime.Zone(timeZone)
        let civil = entries.map { CivilTime($0.date, zone) }
        for option in Option.allCases {
            guard let count = counts[option], count > 0 else { continue }
            let ids = order.map { PrunePeriod.id(option, entries[$0].date, civil[$0]) }
            var alreadyIncluded = Set<String>()
            for (k, i) in order.enumerated() where marks[i] == .keep {
                alreadyIncluded.insert(ids[k])
            }
            var newlyIncluded = Set<String>()
            for (k, i) in order.enumerated() {
                if marks[i] != nil || alreadyIncluded.contains(ids[k]) { continue }
                if !newlyIncluded.contains(ids[k]) {
                    if newlyIncluded.count >= count { break }
                    newlyIncluded.insert(ids[k])
                    marks[i] = .keep
                } else {
                    marks[i] = .remove
                }
            }
        }
        return marks.map { $0 ?? .remove }
    }
}

/// Period ids of the prune passes, as Proxmox computes them from localtime.
enum PrunePeriod {
    /// `c` is `date` on the zone's wall clock (the fields Perl's `localtime` gives Proxmox).
    static func id(_ option: PrunePolicy.Option, _ date: Date, _ c: CivilTime) -> String {
        let y = c.year, m = c.month, d = c.day
        switch option {
        case .last: return String(Int64(date.timeIntervalSince1970.rounded(.down)))
        case .hourly: return "\(c.hour)/\(d)/\(m)/\(y)"
        case .daily: return "\(d)/\(m)/\(y)"
        case .weekly:
            let w = isoWeek(year: y, month: m, day: d)
            return "\(w.week)/\(w.year)"
        case .monthly: return "\(m)/\(y)"
        case .yearly: return "\(y)"
        }
    }

    /// ISO 8601 week number and week-based year (strftime `%V` / `%G`):
    /// weeks start on Monday, week 1 holds the year's first Thursday.
    static func isoWeek(year: Int, month: Int, day: Int) -> (week: Int, year: Int) {
        let ordinal = dayOfYear(year: year, month: month, day: day)
        let wd = weekday(year: year, month: month, day: day) // 1 = Monday … 7 = Sunday
        let week = (ordinal - wd + 10) / 7
        if week < 1 {
            return (weeksInYear(year - 1), year - 1)
        }
        if week > weeksInYear(year) {
            return (1, year + 1)
        }
        return (week, year)
    }

    static func isLeap(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func dayOfYear(year: Int, month: Int, day: Int) -> Int {
        let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]
        return cumulative[month - 1] + day + (month > 2 && isLeap(year) ? 1 : 0)
    }

    /// ISO weekday, 1 = Monday … 7 = Sunday (Sakamoto's method).
    static func weekday(year: Int, month: Int, day: Int) -> Int {
        let t = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4]
        let y = month < 3 ? year - 1 : year
        let sundayBased = (y + y / 4 - y / 100 + y / 400 + t[month - 1] + day) % 7 // 0 = Sunday
        return sundayBased == 0 ? 7 : sundayBased
    }

    /// 53 when 1 January is a Thursday, or a Wednesday in a leap year; else 52.
    static func weeksInYear(_ y: Int) -> Int {
        let jan1 = weekday(year: y, month: 1, day: 1)
        return (jan1 == 4 || (jan1 == 3 && isLeap(y))) ? 53 : 52
    }
}
