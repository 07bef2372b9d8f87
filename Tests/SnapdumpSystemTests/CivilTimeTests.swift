import Foundation
import SnapdumpSystem
import Testing

/// CivilTime against known values, against the Foundation formatters it
/// replaced (kept here only, as the reference), and its parsers' rejects.
@Suite struct CivilTimeTests {
    let vienna = TimeZone(identifier: "Europe/Vienna")!
    let newYork = TimeZone(identifier: "America/New_York")!

    @Test("known Unix times in UTC", arguments: [
        (Int64(0), "1970-01-01 00:00:00", "Thu"),
        (-1, "1969-12-31 23:59:59", "Wed"),
        (951_782_400, "2000-02-29 00:00:00", "Tue"),
        (1_738_367_947, "2025-01-31 23:59:07", "Fri"),
        (2_147_483_648, "2038-01-19 03:14:08", "Tue"),
        (4_107_542_399, "2100-02-28 23:59:59", "Sun"),
        (4_107_542_400, "2100-03-01 00:00:00", "Mon"),
        (13_574_606_400, "2400-02-29 12:00:00", "Tue"),
        (253_402_300_799, "9999-12-31 23:59:59", "Fri"),
    ])
    func knownUTC(_ t: Int64, _ text: String, _ weekday: String) {
        let c = CivilTime(t, .utc)
        #expect(c.spaced == text)
        #expect(c.seconds == t)
        #expect(c.isValid)
        #expect(c.rfc5322.hasPrefix(weekday + ", "))
        #expect(c.rfc5322.hasSuffix(" +0000"))
    }

    @Test func theFormats() {
        let c = CivilTime(1_796_004_000, .utc) // 2026-11-30 02:00:00 UTC, a Monday
        #expect(c.spaced == "2026-11-30 02:00:00")
        #expect(c.underscored == "2026_11_30-02_00_00")
        #expect(c.basicUTC == "20261130T020000Z")
        #expect(c.extendedUTC == "2026-11-30T02:00:00Z")
        #expect(c.rfc5322 == "Mon, 30 Nov 2026 02:00:00 +0000")
        #expect(c.ctime == "Mon Nov 30 02:00:00 2026")
        #expect(CivilTime(1_767_747_600, .utc).ctime == "Wed Jan  7 01:00:00 2026", "ctime pads the day with a space")

        let v = CivilTime(1_796_004_000, .foundation(vienna))
        #expect(v.spaced == "2026-11-30 03:00:00")
        #expect(v.utcOffset == 3600)
        #expect(v.rfc5322 == "Mon, 30 Nov 2026 03:00:00 +0100")
        #expect(v.basicUTC == "20261130T020000Z", "the UTC formats convert")
        #expect(v.extendedUTC == "2026-11-30T02:00:00Z")
        #expect(CivilTime(1_796_004_000, .fixed(seconds: -(5 * 3600 + 30 * 60))).rfc5322 == "Sun, 29 Nov 2026 20:30:00 -0530")
    }

    @Test("Vienna's DST transitions of 2026")
    func dstTransitions() {
        let z = CivilTime.Zone.foundation(vienna)
        // Clocks go 02:00 CET → 03:00 CEST at 01:00 UTC on 29 March, and back at 01:00 UTC on 25 October.
        #expect(CivilTime(1_774_745_999, z).description == "2026-03-29 01:59:59 +0100")
        #expect(CivilTime(1_774_746_000, z).description == "2026-03-29 03:00:00 +0200")
        #expect(CivilTime(1_792_889_999, z).description == "2026-10-25 02:59:59 +0200")
        #expect(CivilTime(1_792_890_000, z).description == "2026-10-25 02:00:00 +0100")
        // Fixed offsets give the same fields as the zone on either side.
        #expect(CivilTime(1_774_745_999, .fixed(seconds: 3600)).spaced == "2026-03-29 01:59:59")
        #expect(CivilTime(1_774_746_000, .fixed(seconds: 7200)).spaced == "2026-03-29 03:00:00")
    }

    /// Wall-clock fields back to a moment, including the hour the clocks skip
    /// and the hour they repeat, exactly as `Calendar.date(from:)` decided it
    /// for ArchiveName before.
    @Test func wallClockToMoment() throws {
        for tz in [vienna, newYork, TimeZone(identifier: "UTC")!, TimeZone(identifier: "Australia/Lord_Howe")!] {
            var cal = Calendar(identifier: .gregorian)
            cal.timeZone = tz
            let texts = ["2026_03_29-02_30_00", "2026_03_29-01_59_59", "2026_03_29-03_00_00", "2026_10_25-02_30_00",
                         "2026_10_25-01_30_00", "2026_10_25-03_00_00", "2026_03_08-02_30_00", "2026_11_01-01_30_00",
                         "2026_04_05-02_15_00", "2026_10_04-02_15_00", "2026_04_05-01_45_00", "2026_10_04-01_45_00",
                         "2024_02_29-12_00_00", "2040_07_01-00_00_00"]
            for text in texts {
                let c = try #require(CivilTime(underscored: text))
                let comps = DateComponents(year: c.year, month: c.month, day: c.day, hour: c.hour, minute: c.minute, second: c.second)
                let expected = try #require(cal.date(from: comps))
                #expect(c.seconds(in: .foundation(tz)) == Int64(expected.timeIntervalSince1970), "\(text) in \(tz.identifier)")
            }
        }
    }

    /// Property-style: random moments 1970–2200 in several zones give what the
    /// DateFormatters snapdump used gave, and parse back (wall-clock fields to
    /// a moment as Calendar did). From 1970: before, some of these zones had
    /// offsets with seconds, which no format here writes.
    @Test func matchesDateFormatter() throws {
        var rng = SplitMix64(seed: 0x5eed_2026)
        let zones = [TimeZone(identifier: "UTC")!, vienna, newYork, TimeZone(identifier: "Asia/Kolkata")!,
                     TimeZone(identifier: "Pacific/Chatham")!, TimeZone(identifier: "America/St_Johns")!]
        for tz in zones {
            func formatter(_ pattern: String) -> DateFormatter {
                let f = DateFormatter()
                f.locale = Locale(identifier: "en_US_POSIX")
                f.timeZone = tz
                f.dateFormat = pattern
                return f
            }
            let spaced = formatter("yyyy-MM-dd HH:mm:ss"), underscored = formatter("yyyy_MM_dd-HH_mm_ss")
            let rfc = formatter("EEE, dd MMM yyyy HH:mm:ss Z"), withOffset = formatter("yyyy-MM-dd HH:mm:ss Z")
            let ctime = formatter("EEE MMM d HH:mm:ss yyyy")
            let basic = formatter("yyyyMMdd'T'HHmmss'Z'")
            basic.timeZone = TimeZone(identifier: "UTC")
            var cal = Calendar(identifier: .gregorian)
            cal.timeZone = tz
            for _ in 0..<1000 {
                let t = Int64(rng.next() % 7_258_118_400) // 1970 … 2200
                let d = Date(timeIntervalSince1970: TimeInterval(t) + Double(rng.next() % 1000) / 1000)
                let c = CivilTime(d, .foundation(tz))
                #expect(c.spaced == spaced.string(from: d))
                #expect(c.underscored == underscored.string(from: d))
                #expect(c.rfc5322 == rfc.string(from: d))
                #expect(c.basicUTC == basic.string(from: d))
                let old = ctime.string(from: d).split(separator: " ", omittingEmptySubsequences: false)
                #expect(c.ctime == (old[2].count == 1 ? "\(old[0]) \(old[1])  \(old[2]) \(old[3]) \(old[4])" : old.joined(separator: " ")))
                // Round trips.
                #expect(CivilTime(basicUTC: c.basicUTC)?.seconds == t)
                #expect(CivilTime(extendedUTC: c.extendedUTC)?.seconds == t)
                #expect(CivilTime(spaced: withOffset.string(from: d), offset: true)?.seconds == t)
                #expect(CivilTime(spaced: c.description, offset: true)?.seconds == t)
                let wall = try #require(CivilTime(underscored: c.underscored))
                let comps = DateComponents(year: c.year, month: c.month, day: c.day, hour: c.hour, minute: c.minute, second: c.second)
                #expect(wall.seconds(in: .foundation(tz)) == Int64(cal.date(from: comps)!.timeIntervalSince1970))
            }
        }
    }

    /// The C library's local time is Foundation's current zone for the same environment.
    @Test func localIsTheCurrentZone() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<2000 {
            let t = Int64(bitPattern: rng.next() % 4_000_000_000)
            #expect(CivilTime(t, .local) == CivilTime(t, .foundation(TimeZone.current)), "at \(t)")
        }
        let now = CivilTime.now(.local)
        #expect(abs(now.seconds - Int64(Date().timeIntervalSince1970)) <= 2)
    }

    @Test("parsers reject", arguments: [
        "", "2026113T020000Z", "20261130T020000", "20261130T020000ZZ", "20261130 020000Z", "2026113aT020000Z",
        "20261330T020000Z", "20260230T020000Z", "20250229T000000Z", "19000229T000000Z", "20261131T000000Z",
        "20261100T000000Z", "20261130T240000Z", "20261130T006000Z", "20261130T000060Z", "+0261130T020000Z",
    ])
    func basicRejects(_ s: String) {
        #expect(CivilTime(basicUTC: s) == nil)
    }

    @Test func otherParsers() {
        #expect(CivilTime(basicUTC: "20240229T235959Z")?.seconds == 1_709_251_199)
        #expect(CivilTime(basicUTC: "20000229T000000Z")?.seconds == 951_782_400)
        #expect(CivilTime(extendedUTC: "2038-01-19T03:14:08Z")?.seconds == 2_147_483_648)
        for bad in ["2026-11-30T02:00:00", "2026-11-30 02:00:00Z", "2026-02-30T02:00:00Z", "2026-13-01T00:00:00Z",
                    "2026-11-30T02:00:0Z", "2026-11-30T02:00:00z", "2026-1-30T02:00:00Z", " 2026-11-30T02:00:00Z"] {
            #expect(CivilTime(extendedUTC: bad) == nil, "\(bad)")
        }
        #expect(CivilTime(underscored: "2025_01_31-23_59_07")?.spaced == "2025-01-31 23:59:07")
        for bad in ["2025_01_31-23_59_0", "2025_02_29-00_00_00", "2025_00_10-00_00_00", "2025-01-31-23_59_07", "2025_01_31_23_59_07"] {
            #expect(CivilTime(underscored: bad) == nil, "\(bad)")
        }
        #expect(CivilTime(spaced: "2026-11-30 03:00:00 +0100", offset: true)?.seconds == 1_796_004_000)
        #expect(CivilTime(spaced: "2026-11-29 20:30:00 -0530", offset: true)?.seconds == 1_796_004_000)
        #expect(CivilTime(spaced: "2026-11-30 03:00:00", offset: false)?.seconds(in: .foundation(vienna)) == 1_796_004_000)
        for bad in ["2026-11-30 03:00:00", "2026-11-30 03:00:00 0100", "2026-11-30 03:00:00 +01", "2026-11-30 03:00:00 +0160",
                    "2026-11-30 03:00:00 +0100 ", "2026-11-31 03:00:00 +0100"] {
            #expect(CivilTime(spaced: bad, offset: true) == nil, "\(bad)")
        }
        #expect(CivilTime(spaced: "2026-11-30 03:00:00 +0100", offset: false) == nil)
    }

    /// What a user types (`schedule analyze --starttime`): the shapes, the bounds, and round trips.
    @Test func lenientParser() throws {
        for s in ["1970-01-01 00:00:00", "2000-02-29 12:34:56", "2100-03-01 00:00:00", "1969-12-31 23:59:59",
                  "2400-02-29 23:59:59", "0001-01-01 00:00:00", "9999-12-31 23:59:59"] {
            let c = try #require(CivilTime(lenient: s), "\(s)")
            #expect(c.spaced == s)
            #expect(c.utcOffset == 0)
            #expect(CivilTime(c.seconds) == c, "\(s): fields → seconds → fields")
        }
        for (s, expected) in [("2024-01-01 10:00", "2024-01-01 10:00:00"), ("2024-01-01T10:00", "2024-01-01 10:00:00"),
                              ("2024-01-01T10:00:07", "2024-01-01 10:00:07"), ("2024-01-01", "2024-01-01 00:00:00"),
                              ("  2024-1-5   2:05:09\t", "2024-01-05 02:05:09"), ("999-12-31 23:59", "0999-12-31 23:59:00")] {
            #expect(CivilTime(lenient: s)?.spaced == expected, "\(s)")
        }
        for bad in ["", " ", "2023-02-29 00:00", "2024-01-01 24:00", "2024-01-01 10:60", "2024-01-01 10:00:60", "2024-01-01 10",
                    "2024-01-01T", "2024-01-01 10:00:", "2024-01-0110:00", "2024-01-01 10:00 +0100", "27.10.2024", "2024-13-01",
                    "2024-00-10", "2024-01-00", "+2024-01-01", "2024--01-01", "0000-01-01", "10000-01-01",
                    "999999999999-01-01 00:00", "2024-01-01 00:00:00:00"] {
            #expect(CivilTime(lenient: bad) == nil, "\(bad)")
        }
    }

    /// A wall-clock time in the hour clocks skip or repeat (`--starttime`, calendar events): mktime's answer.
    @Test func wallClockInGapAndOverlap() throws {
        func moment(_ text: String, _ zone: String) throws -> Int64 {
            try #require(CivilTime(lenient: text)).seconds(in: .foundation(TimeZone(identifier: zone)!))
        }
        #expect(try moment("2024-03-31 02:30:00", "Europe/Berlin") == 1_711_848_600, "skipped: 03:30 CEST, 01:30 UTC")
        #expect(try moment("2024-10-27 02:30:00", "Europe/Berlin") == 1_729_989_000, "repeated: the first, 00:30 UTC")
        #expect(try moment("2024-11-03 01:30:00", "America/New_York") == 1_730_611_800, "repeated: the first, 05:30 UTC")
        #expect(try moment("2024-07-01 12:00:00", "America/New_York") == 1_719_849_600)
        #expect(try moment("2024-07-01 12:00:00", "UTC") == CivilTime(lenient: "2024-07-01 12:00")?.seconds)
    }

    @Test func calendarArithmetic() {
        #expect(CivilTime.isLeapYear(2000) && CivilTime.isLeapYear(2024) && CivilTime.isLeapYear(2400))
        #expect(!CivilTime.isLeapYear(1900) && !CivilTime.isLeapYear(2100) && !CivilTime.isLeapYear(2026))
        #expect(CivilTime.daysIn(month: 2, year: 2024) == 29)
        #expect(CivilTime.daysIn(month: 2, year: 2100) == 28)
        // Every day from 1800 to 2500 and back: the fields and the weekday follow one another.
        var previous = CivilTime(-5_364_662_400 - 86400, .utc) // 1799-12-31
        #expect(previous.spaced == "1799-12-31 00:00:00")
        var t: Int64 = -5_364_662_400
        var wrong: [Int64] = []
        while t < 16_725_225_600 {
            let c = CivilTime(t, .utc)
            let sameMonth = previous.day + 1 <= CivilTime.daysIn(month: previous.month, year: previous.year)
            let follows = sameMonth
                ? c.year == previous.year && c.month == previous.month && c.day == previous.day + 1
                : c.day == 1 && c.month == previous.month % 12 + 1 && c.year == previous.year + (previous.month == 12 ? 1 : 0)
            if c.seconds != t || c.weekday != (previous.weekday + 1) % 7 || !follows || !c.isValid { wrong.append(t) }
            previous = c
            t += 86400
        }
        #expect(wrong.isEmpty)
        #expect(previous.spaced == "2499-12-31 00:00:00")
    }
}

/// A small seeded generator (SplitMix64) so the random cases repeat.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E9B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
