import Archive
import Foundation
import Testing
@testable import Backup

// Proxmox's prune_mark_backup_group, table-driven. Every expected result
// below was derived by hand from the algorithm (or is Proxmox's own test
// table, pve-storage test/prune_backups_test.pm), never by running the
// implementation. ISO weeks were cross-checked with GNU `date +%V/%G`.

let utc = TimeZone(identifier: "UTC")!

/// The time encoded in `YYYY_MM_DD-HH_MM_SS`, read in `tz`.
func nameDate(_ ts: String, _ tz: TimeZone = utc) -> Date {
    ArchiveName(fileName: "vzdump-qemu-100-\(ts).vma")!.date(timeZone: tz)!
}

struct PruneCase: CustomTestStringConvertible, Sendable {
    var name: String
    var policy: String
    /// Timestamps; a trailing " P" marks a protected backup.
    var backups: [String]
    /// The expected mark of each backup, in the same order.
    var expected: [PruneMark]
    var testDescription: String { name }
}

private let K = PruneMark.keep, R = PruneMark.remove, P = PruneMark.protected

/// Proxmox's test list: five qemu backups of one guest (basetime 2020_01_01-12_18_21 UTC).
private let pve = ["2018_05_26-11_18_21", "2019_12_31-11_18_21", "2019_12_31-11_19_21",
                   "2020_01_01-11_18_21", "2020_01_01-12_18_21"]

/// Daily backups at `time` from `from` to `to` (inclusive), as timestamps.
func daily(_ from: String, _ to: String, at time: String) -> [String] {
    var cal = Calendar(identifier: .gregorian)
    cal.timeZone = utc
    let f = DateFormatter()
    f.timeZone = utc
    f.locale = Locale(identifier: "en_US_POSIX")
    f.dateFormat = "yyyy_MM_dd"
    var d = f.date(from: from)!
    let end = f.date(from: to)!
    var out: [String] = []
    while d <= end {
        out.append(f.string(from: d) + "-" + time)
        d = cal.date(byAdding: .day, value: 1, to: d)!
    }
    return out
}

private let isoBoundary2020 = daily("2020_12_28", "2021_01_10", at: "10_00_00") // Mon W53/2020 … Sun W01/2021
private let isoBoundary2026 = daily("2026_12_28", "2027_01_04", at: "23_59_59") // Mon W53/2026 … Mon W01/2027
private let hours = ["2021_03_14-23_30_00", "2021_03_15-08_05_00", "2021_03_15-08_45_00", "2021_03_15-09_10_00",
                     "2021_03_15-09_50_00", "2021_03_15-10_30_00", "2021_03_15-11_00_00", "2021_03_15-11_59_00"]
private let months = ["2019_11_30-10_00_00", "2019_12_15-10_00_00", "2019_12_31-10_00_00", "2020_01_31-10_00_00",
                      "2020_02_29-10_00_00", "2020_03_01-10_00_00", "2020_03_31-10_00_00", "2021_06_01-10_00_00"]

/// Marks for `backups` where exactly the listed timestamps are kept.
func keeping(_ kept: Set<String>, of backups: [String]) -> [PruneMark] {
    backups.map { kept.contains($0) ? .keep : .remove }
}

let pruneCases: [PruneCase] = [
    // Proxmox's own table (pve-storage test/prune_backups_test.pm), qemu entries.
    PruneCase(name: "pve: last=3", policy: "keep-last=3", backups: pve, expected: [R, R, K, K, K]),
    PruneCase(name: "pve: weekly=2 (31 Dec 2019 is in ISO week 1/2020)", policy: "keep-weekly=2", backups: pve, expected: [K, R, R, R, K]),
    PruneCase(name: "pve: hourly=0,daily=weekly=monthly=1", policy: "keep-hourly=0,keep-daily=1,keep-weekly=1,keep-monthly=1",
              backups: pve, expected: [K, R, K, R, K]),
    PruneCase(name: "pve: hourly=4,daily=0", policy: "keep-hourly=4,keep-daily=0", backups: pve, expected: [K, R, K, K, K]),
    PruneCase(name: "pve: yearly=2", policy: "keep-hourly=0,keep-daily=0,keep-weekly=0,keep-monthly=0,keep-yearly=2",
              backups: pve, expected: [R, R, K, R, K]),
    PruneCase(name: "pve: last=2,hourly=2", policy: "keep-last=2,keep-hourly=2", backups: pve, expected: [K, R, K, K, K]),
    PruneCase(name: "pve: last=1,monthly=2", policy: "keep-last=1,keep-monthly=2", backups: pve, expected: [K, R, K, R, K]),
    PruneCase(name: "pve: monthly=3", policy: "keep-monthly=3", backups: pve, expected: [K, R, K, R, K]),
    PruneCase(name: "pve: last=daily=weekly=1", policy: "keep-last=1,keep-daily=1,keep-weekly=1", backups: pve, expected: [K, R, K, R, K]),
    PruneCase(name: "pve: last=daily=weekly=1, others 0",
              policy: "keep-hourly=0,keep-last=1,keep-daily=1,keep-weekly=1,keep-monthly=0,keep-yearly=0",
              backups: pve, expected: [K, R, K, R, K]),
    PruneCase(name: "pve: daily=2", policy: "keep-daily=2", backups: pve, expected: [R, R, K, R, K]),
    PruneCase(name: "pve: weekly=monthly=1", policy: "keep-weekly=1,keep-monthly=1", backups: pve, expected: [K, R, R, R, K]),
    PruneCase(name: "pve: weekly=yearly=1", policy: "keep-weekly=1,keep-yearly=1", backups: pve, expected: [K, R, R, R, K]),
    PruneCase(name: "pve: all missing", policy: "", backups: pve, expected: [K, K, K, K, K]),
    PruneCase(name: "pve: all zero", policy: "keep-last=0,keep-hourly=0,keep-daily=0,keep-weekly=0,keep-monthly=0,keep-yearly=0",
              backups: pve, expected: [K, K, K, K, K]),
    PruneCase(name: "pve: threeway daily=weekly=monthly=1 (month already held by the weekly keep)",
              policy: "keep-daily=1,keep-weekly=1,keep-monthly=1",
              backups: ["2019_12_25-12_18_21", "2019_12_31-12_18_21", "2020_01_01-12_18_21"], expected: [K, R, K]),
    PruneCase(name: "pve: yearly=1 across 1970 and 2070", policy: "keep-yearly=1",
              backups: ["1970_01_01-00_01_23", "2070_01_01-00_01_00"], expected: [R, K]),

    // ISO weeks across the 2020/2021 boundary: 28 Dec 2020 – 3 Jan 2021 is week 53 of 2020.
    PruneCase(name: "weekly=3 over 2020-12-28..2021-01-10 finds only two ISO weeks", policy: "keep-weekly=3",
              backups: isoBoundary2020, expected: keeping(["2021_01_10-10_00_00", "2021_01_03-10_00_00"], of: isoBoundary2020)),
    PruneCase(name: "daily=3,weekly=2 over 2020-12-28..2021-01-10", policy: "keep-daily=3,keep-weekly=2",
              backups: isoBoundary2020,
              expected: keeping(["2021_01_10-10_00_00", "2021_01_09-10_00_00", "2021_01_08-10_00_00", "2021_01_03-10_00_00"],
                                of: isoBoundary2020)),
    // … and across 2026/2027: 28 Dec 2026 – 3 Jan 2027 is week 53 of 2026.
    PruneCase(name: "weekly=5 over 2026-12-28..2027-01-04", policy: "keep-weekly=5", backups: isoBoundary2026,
              expected: keeping(["2027_01_04-23_59_59", "2027_01_03-23_59_59"], of: isoBoundary2026)),
    PruneCase(name: "daily=2,yearly=2 over 2026-12-28..2027-01-04", policy: "keep-daily=2,keep-yearly=2", backups: isoBoundary2026,
              expected: keeping(["2027_01_04-23_59_59", "2027_01_03-23_59_59", "2026_12_31-23_59_59"], of: isoBoundary2026)),
    PruneCase(name: "weekly marks the rest of week 53 remove, so monthly and yearly find nothing",
              policy: "keep-daily=1,keep-weekly=1,keep-monthly=2,keep-yearly=2", backups: isoBoundary2026,
              expected: keeping(["2027_01_04-23_59_59", "2027_01_03-23_59_59"], of: isoBoundary2026)),

    // Hours.
    PruneCase(name: "hourly=3", policy: "keep-hourly=3", backups: hours, expected: [R, R, R, R, K, K, R, K]),
    PruneCase(name: "last=2,hourly=2", policy: "keep-last=2,keep-hourly=2", backups: hours, expected: [R, R, R, R, K, K, K, K]),
    PruneCase(name: "hourly=1,daily=2", policy: "keep-hourly=1,keep-daily=2", backups: hours, expected: [K, R, R, R, R, R, R, K]),

    // Months and years (2020 is a leap year).
    PruneCase(name: "monthly=3,yearly=2: 2020 already held, so yearly adds only 2019", policy: "keep-monthly=3,keep-yearly=2",
              backups: months, expected: [R, R, K, R, K, R, K, K]),
    PruneCase(name: "yearly=3", policy: "keep-yearly=3", backups: months, expected: [R, R, K, R, R, R, K, K]),

    // Protected backups neither hold a period nor count.
    PruneCase(name: "daily=2 with two protected", policy: "keep-daily=2",
              backups: ["2021_05_01-10_00_00", "2021_05_02-10_00_00", "2021_05_03-10_00_00 P", "2021_05_04-10_00_00", "2021_05_05-10_00_00 P"],
              expected: [R, K, P, K, P]),
    PruneCase(name: "a protected backup does not hold its day", policy: "keep-daily=2",
              backups: ["2021_05_03-10_00_00", "2021_05_04-10_00_00", "2021_05_05-08_00_00", "2021_05_05-10_00_00 P"],
              expected: [R, K, K, P]),
    PruneCase(name: "last=2 with the newest protected", policy: "keep-last=2",
              backups: daily("2021_05_01", "2021_05_04", at: "10_00_00") + ["2021_05_05-10_00_00 P"],
              expected: [R, R, K, K, P]),
    PruneCase(name: "keep-all keeps protected as protected", policy: "keep-all=1",
              backups: ["2021_05_01-10_00_00", "2021_05_02-10_00_00 P"], expected: [K, P]),
]

/// pve-docs "Retention Settings Example": daily backups for ten years with
/// keep-last=3,keep-daily=13,keep-weekly=8,keep-monthly=11,keep-yearly=9.
/// Newest backup Sunday 2025-06-15 (ISO week 24). By hand:
/// last 15,14,13 Jun; daily 12 Jun … 31 May (13); weekly: weeks 24–22 are
/// already held, so the Sundays of weeks 21…14 (25 May … 6 Apr), the rest of
/// those weeks removed (31 Mar included); monthly: Jun, May, Apr 2025 held,
/// so 30 Mar 2025 (31 Mar was removed by the weekly pass), 28 Feb, 31 Jan,
/// then the month ends Dec 2024 … May 2024 (11); yearly: 2025 and 2024
/// held, so 31 Dec 2023 … 31 Dec 2015 (9). 44 backups kept.
let documentedExampleKept: Set<String> = {
    var s: Set<String> = []
    for d in ["2025_06_15", "2025_06_14", "2025_06_13"] { s.insert(d) }
    for d in 1...12 { s.insert(String(format: "2025_06_%02d", d)) }
    s.insert("2025_05_31")
    for d in ["2025_05_25", "2025_05_18", "2025_05_11", "2025_05_04", "2025_04_27", "2025_04_20", "2025_04_13", "2025_04_06"] { s.insert(d) }
    for d in ["2025_03_30", "2025_02_28", "2025_01_31", "2024_12_31", "2024_11_30", "2024_10_31", "2024_09_30",
              "2024_08_31", "2024_07_31", "2024_06_30", "2024_05_31"] { s.insert(d) }
    for y in 2015...2023 { s.insert("\(y)_12_31") }
    return Set(s.map { $0 + "-02_00_00" })
}()

@Suite("Prune algorithm")
struct PruneAlgorithmTests {
    func run(_ c: PruneCase, timeZone: TimeZone = utc) throws -> [PruneMark] {
        let policy = try PrunePolicy(parsing: c.policy)
        let entries = c.backups.map { b -> PrunePolicy.Entry in
            let prot = b.hasSuffix(" P")
            return .init(date: nameDate(prot ? String(b.dropLast(2)) : b, timeZone), isProtected: prot)
        }
        return policy.mark(entries, timeZone: timeZone)
    }

    @Test(arguments: pruneCases)
    func table(_ c: PruneCase) throws {
        #expect(try run(c) == c.expected)
    }

    @Test("input order does not matter", arguments: pruneCases)
    func shuffled(_ c: PruneCase) throws {
        var shuffled = c
        let perm = Array(c.backups.indices.reversed())
        shuffled.backups = perm.map { c.backups[$0] }
        shuffled.expected = perm.map { c.expected[$0] }
        #expect(try run(shuffled) == shuffled.expected)
    }

    @Test("periods are local time: the same names give the same marks in any zone",
          arguments: ["America/New_York", "Asia/Kolkata", "Pacific/Chatham"])
    func localTime(_ zone: String) throws {
        let tz = TimeZone(identifier: zone)!
        for c in pruneCases where c.name.contains("2020-12-28") || c.name.contains("2026-12-28") || c.name.hasPrefix("hourly") {
            #expect(try run(c, timeZone: tz) == c.expected, "\(c.name) in \(zone)")
        }
    }

    @Test("pve-docs retention example: ten years of daily backups")
    func documentedExample() throws {
        let backups = daily("2014_01_01", "2025_06_15", at: "02_00_00")
        let c = PruneCase(name: "docs", policy: "keep-last=3,keep-daily=13,keep-weekly=8,keep-monthly=11,keep-yearly=9",
                          backups: backups, expected: keeping(documentedExampleKept, of: backups))
        let got = try run(c)
        let kept = Set(zip(backups, got).filter { $0.1 == .keep }.map(\.0))
        #expect(kept.count == 44)
        #expect(kept == documentedExampleKept)
        #expect(got.allSatisfy { $0 == .keep || $0 == .remove })
    }

    @Test("two backups in the same second are one keep-last period (as in Proxmox)")
    func sameSecond() throws {
        let d = nameDate("2021_01_01-00_00_00")
        let m = try PrunePolicy(parsing: "keep-last=2").mark([.init(date: d), .init(date: d), .init(date: d - 60)], timeZone: utc)
        #expect(m == [.keep, .remove, .keep])
    }

    @Test("ISO week and week-based year match strftime %V/%G")
    func isoWeeks() {
        // Expected values from GNU date +%V/%G.
        let cases: [(Int, Int, Int, Int, Int)] = [
            (2020, 12, 31, 53, 2020), (2021, 1, 3, 53, 2020), (2021, 1, 4, 1, 2021), (2019, 12, 30, 1, 2020),
            (2027, 1, 3, 53, 2026), (2027, 1, 4, 1, 2027), (2024, 12, 30, 1, 2025), (2016, 1, 3, 53, 2015),
            (2010, 1, 3, 53, 2009), (2005, 1, 2, 53, 2004), (2008, 12, 29, 1, 2009), (2026, 12, 28, 53, 2026),
            (2025, 6, 15, 24, 2025), (2025, 3, 30, 13, 2025), (2018, 5, 26, 21, 2018),
        ]
        for (y, m, d, w, wy) in cases {
            let got = PrunePeriod.isoWeek(year: y, month: m, day: d)
            #expect(got.week == w && got.year == wy, "\(y)-\(m)-\(d): got \(got.week)/\(got.year), want \(w)/\(wy)")
        }
    }
}
