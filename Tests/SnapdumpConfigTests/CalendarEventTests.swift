import Foundation
import Testing
@testable import SnapdumpConfig
import SnapdumpSystem

/// One evaluation: the next `expected.count` events after `start` (local time in `zone`).
struct NextCase: Sendable, CustomTestStringConvertible {
    var event: String
    var start: String
    var expected: [String]
    var zone = "UTC"
    var testDescription: String { "'\(event)' after \(start) \(zone)" }

    init(_ event: String, _ start: String, _ expected: String..., zone: String = "UTC") {
        self.event = event
        self.start = start
        self.expected = expected
        self.zone = zone
    }
}

func tz(_ name: String) -> TimeZone { TimeZone(identifier: name)! }

/// `YYYY-MM-DD HH:MM:SS` in `zone` → instant (the first, for an ambiguous time).
func at(_ text: String, _ zone: String = "UTC") -> Date {
    Date(timeIntervalSince1970: TimeInterval(CivilTime(lenient: text)!.seconds(in: .foundation(tz(zone)))))
}

func upcoming(_ c: NextCase) throws -> [String] {
    let e = try CalendarEvent(c.event)
    return e.upcoming(after: at(c.start, c.zone), count: c.expected.count, in: tz(c.zone)).map { CivilTime($0, .foundation(tz(c.zone))).spaced }
}

/// proxmox-time's own test table (src/test.rs), evaluated in UTC from the
/// same start instants: THURSDAY_00_00 is 1970-01-01 00:00:00 (a Thursday).
let proxmoxCases: [NextCase] = [
    // minute-only syntax
    NextCase("0", "1970-01-01 00:00:00", "1970-01-01 01:00:00"),
    NextCase("*", "1970-01-01 00:00:00", "1970-01-01 00:01:00"),
    NextCase("*:0", "1970-01-01 00:00:00", "1970-01-01 01:00:00"),
    NextCase("*:*", "1970-01-01 00:00:00", "1970-01-01 00:01:00"),
    NextCase("*:*:*", "1970-01-01 00:00:00", "1970-01-01 00:00:01"),
    NextCase("*:3:5", "1970-01-01 00:00:00", "1970-01-01 00:03:05"),
    NextCase("mon *:*", "1970-01-01 00:00:00", "1970-01-05 00:00:00"),
    NextCase("mon 2:*", "1970-01-01 00:00:00", "1970-01-05 02:00:00"),
    NextCase("mon 2:50", "1970-01-01 00:00:00", "1970-01-05 02:50:00"),
    NextCase("tue", "1970-01-01 00:00:00", "1970-01-06 00:00:00"),
    NextCase("wed", "1970-01-01 00:00:00", "1970-01-07 00:00:00"),
    NextCase("thu", "1970-01-01 00:00:00", "1970-01-08 00:00:00"),
    NextCase("fri", "1970-01-01 00:00:00", "1970-01-02 00:00:00"),
    NextCase("sat", "1970-01-01 00:00:00", "1970-01-03 00:00:00"),
    NextCase("sun", "1970-01-01 00:00:00", "1970-01-04 00:00:00"),
    // repeated ranges
    NextCase("4..10/2:0", "1970-01-01 00:00:00", "1970-01-01 04:00:00", "1970-01-01 06:00:00", "1970-01-01 08:00:00",
             "1970-01-01 10:00:00", "1970-01-02 04:00:00"),
    NextCase("4..10/2:0", "1970-01-01 05:00:00", "1970-01-01 06:00:00"),
    NextCase("4..10/2:0", "1970-01-01 11:00:00", "1970-01-02 04:00:00"),
    // lists, in any order
    NextCase("5,10:4,8", "1970-01-01 00:00:00", "1970-01-01 05:04:00", "1970-01-01 05:08:00", "1970-01-01 10:04:00"),
    NextCase("10,5:8,4", "1970-01-01 00:00:00", "1970-01-01 05:04:00"),
    NextCase("6,4..10:23,5/5", "1970-01-01 00:00:00", "1970-01-01 04:05:00"),
    NextCase("4..10,6:5/5,23", "1970-01-01 00:00:00", "1970-01-01 04:05:00", "1970-01-01 04:10:00"),
    // month wrapping (2020-07-31 is a Friday)
    NextCase("sat", "2020-07-31 00:00:00", "2020-08-01 00:00:00"),
    NextCase("sun", "2020-07-31 00:00:00", "2020-08-02 00:00:00"),
    NextCase("mon", "2020-07-31 00:00:00", "2020-08-03 00:00:00"),
    NextCase("tue", "2020-07-31 00:00:00", "2020-08-04 00:00:00"),
    NextCase("wed", "2020-07-31 00:00:00", "2020-08-05 00:00:00"),
    NextCase("thu", "2020-07-31 00:00:00", "2020-08-06 00:00:00"),
    NextCase("fri", "2020-07-31 00:00:00", "2020-08-07 00:00:00"),
    // year wrapping (2020-12-31 is a Thursday)
    NextCase("fri", "2020-12-31 00:00:00", "2021-01-01 00:00:00"),
    NextCase("sat", "2020-12-31 00:00:00", "2021-01-02 00:00:00"),
    NextCase("sun", "2020-12-31 00:00:00", "2021-01-03 00:00:00"),
    NextCase("mon", "2020-12-31 00:00:00", "2021-01-04 00:00:00"),
    NextCase("tue", "2020-12-31 00:00:00", "2021-01-05 00:00:00"),
    NextCase("wed", "2020-12-31 00:00:00", "2021-01-06 00:00:00"),
    NextCase("thu", "2020-12-31 00:00:00", "2021-01-07 00:00:00"),
    NextCase("daily", "1970-01-01 00:00:00", "1970-01-02 00:00:00"),
    NextCase("daily", "1970-01-01 00:00:01", "1970-01-02 00:00:00"),
    NextCase("5/2:0", "1970-01-01 00:00:00", "1970-01-01 05:00:00", "1970-01-01 07:00:00", "1970-01-01 09:00:00", "1970-01-01 11:00:00"),
    NextCase("1:0", "1970-01-01 15:00:00", "1970-01-02 01:00:00", "1970-01-03 01:00:00", "1970-01-04 01:00:00"),
    // dates
    NextCase("2020-07-31", "1970-01-01 00:00:00", "2020-07-31 00:00:00"),
    NextCase("02-28", "1970-01-01 00:00:00", "1970-02-28 00:00:00"),
    NextCase("02-29", "1970-01-01 00:00:00", "1972-02-29 00:00:00"),
    NextCase("1965/5-01-01", "1969-12-31 23:59:59", "1970-01-01 00:00:00", "1975-01-01 00:00:00"),
    NextCase("2020-7..9-2/2", "2020-07-31 00:00:00", "2020-08-02 00:00:00"),
    NextCase("2020,2021-12-31", "2020-07-31 00:00:00", "2020-12-31 00:00:00", "2021-12-31 00:00:00"),
    // keywords
    NextCase("minutely", "1970-01-01 00:00:00", "1970-01-01 00:01:00"),
    NextCase("hourly", "1970-01-01 00:00:00", "1970-01-01 01:00:00"),
    NextCase("weekly", "1970-01-01 00:00:00", "1970-01-05 00:00:00", "1970-01-12 00:00:00"),
    NextCase("monthly", "1970-01-01 00:00:00", "1970-02-01 00:00:00"),
    NextCase("quarterly", "1970-01-01 00:00:00", "1970-04-01 00:00:00", "1970-07-01 00:00:00", "1970-10-01 00:00:00", "1971-01-01 00:00:00"),
    NextCase("semiannually", "1970-01-01 00:00:00", "1970-07-01 00:00:00", "1971-01-01 00:00:00"),
    NextCase("semi-annually", "1970-01-01 00:00:00", "1970-07-01 00:00:00"),
    NextCase("yearly", "1970-01-01 00:00:00", "1971-01-01 00:00:00"),
    NextCase("annually", "1970-01-01 00:00:00", "1971-01-01 00:00:00"),
]

/// The reference's examples and more: month ends, leap years, weekday
/// ranges, seconds, steps.
let moreCases: [NextCase] = [
    // reference/proxmox-vzdump.md
    NextCase("sat 02:00", "2026-05-01 12:00:00", "2026-05-02 02:00:00", "2026-05-09 02:00:00"),
    NextCase("mon..fri 8..17,22:0/15", "2026-05-01 17:40:00", "2026-05-01 17:45:00", "2026-05-01 22:00:00",
             "2026-05-01 22:15:00", "2026-05-01 22:30:00", "2026-05-01 22:45:00", "2026-05-04 08:00:00"),
    NextCase("Sat *-1..7 15:00", "2026-01-01 00:00:00", "2026-01-03 15:00:00", "2026-02-07 15:00:00", "2026-03-07 15:00:00",
             "2026-04-04 15:00:00"),
    NextCase("*/5", "2026-05-01 12:03:10", "2026-05-01 12:05:00", "2026-05-01 12:10:00"),
    NextCase("*/1", "2026-05-01 12:03:10", "2026-05-01 12:04:00", "2026-05-01 12:05:00"),
    // month ends and leap years
    NextCase("*-*-31", "2024-01-31 01:00:00", "2024-03-31 00:00:00", "2024-05-31 00:00:00", "2024-07-31 00:00:00",
             "2024-08-31 00:00:00"),
    NextCase("*-*-30 12:00", "2023-01-30 13:00:00", "2023-03-30 12:00:00"),
    NextCase("*-02-29", "2024-03-01 00:00:00", "2028-02-29 00:00:00", "2032-02-29 00:00:00"),
    NextCase("*-02-29", "2096-03-01 00:00:00", "2104-02-29 00:00:00"), // 2100 is not a leap year
    NextCase("*-02-28,29 23:59:59", "2023-02-28 23:59:59", "2024-02-28 23:59:59", "2024-02-29 23:59:59", "2025-02-28 23:59:59"),
    NextCase("monthly", "2024-01-31 23:59:59", "2024-02-01 00:00:00"),
    NextCase("fri *-*-13", "2024-01-01 00:00:00", "2024-09-13 00:00:00", "2024-12-13 00:00:00", "2025-06-13 00:00:00"),
    NextCase("*-12-24 18:00", "2026-12-24 18:00:00", "2027-12-24 18:00:00"),
    NextCase("*-12-31 23:59:59", "2024-12-31 23:59:58", "2024-12-31 23:59:59", "2025-12-31 23:59:59"),
    NextCase("2026-12-24", "2026-01-01 00:00:00", "2026-12-24 00:00:00"),
    NextCase("*/2-01-01", "2025-06-01 00:00:00", "2026-01-01 00:00:00", "2028-01-01 00:00:00"),
    NextCase("*-*/2-01", "2026-01-15 00:00:00", "2026-03-01 00:00:00", "2026-05-01 00:00:00"),
    // weekdays: lists, ranges, wrapping ranges, long names, case
    NextCase("fri..mon 12:00", "2024-01-02 00:00:00", "2024-01-05 12:00:00", "2024-01-06 12:00:00", "2024-01-07 12:00:00",
             "2024-01-08 12:00:00", "2024-01-12 12:00:00"),
    NextCase("sun,sat 6:30", "2024-01-01 00:00:00", "2024-01-06 06:30:00", "2024-01-07 06:30:00"),
    NextCase("Monday", "2024-01-01 00:00:00", "2024-01-08 00:00:00"),
    NextCase("MON,Wednesday..thu", "2024-01-01 00:00:00", "2024-01-03 00:00:00", "2024-01-04 00:00:00", "2024-01-08 00:00:00"),
    NextCase("mon..sun 0:0", "2024-01-01 00:00:00", "2024-01-02 00:00:00"),
    // times: seconds, steps, lists
    NextCase("*:*:0/20", "2024-01-01 00:00:00", "2024-01-01 00:00:20", "2024-01-01 00:00:40", "2024-01-01 00:01:00"),
    NextCase("12:00:30", "2024-01-01 12:00:30", "2024-01-02 12:00:30"),
    NextCase("0/30", "2024-01-01 00:00:00", "2024-01-01 00:30:00", "2024-01-01 01:00:00"),
    NextCase("22:0/15", "2024-01-01 22:50:00", "2024-01-02 22:00:00"),
    NextCase("23:59", "2024-12-31 23:59:00", "2025-01-01 23:59:00"),
    NextCase("0..23/6:0", "2024-01-01 00:00:00", "2024-01-01 06:00:00", "2024-01-01 12:00:00", "2024-01-01 18:00:00", "2024-01-02 00:00:00"),
    NextCase("*/6:15", "2024-01-01 00:00:00", "2024-01-01 00:15:00", "2024-01-01 06:15:00"),
    NextCase("8..17:00", "2024-01-01 17:00:00", "2024-01-02 08:00:00"),
    // the UTC suffix, evaluated from a Berlin clock (printed in Berlin time)
    NextCase("02:00 UTC", "2024-01-01 00:00:00", "2024-01-01 03:00:00", "2024-01-02 03:00:00", zone: "Europe/Berlin"),
    NextCase("02:00 UTC", "2024-07-01 00:00:00", "2024-07-01 04:00:00", zone: "Europe/Berlin"),
    NextCase("daily UTC", "2024-07-01 12:00:00", "2024-07-02 02:00:00", zone: "Europe/Berlin"),
    // local time: a Berlin daily job keeps its wall-clock time across DST
    NextCase("daily", "2024-03-30 12:00:00", "2024-03-31 00:00:00", "2024-04-01 00:00:00", zone: "Europe/Berlin"),
    NextCase("sat 02:00", "2024-10-25 00:00:00", "2024-10-26 02:00:00", "2024-11-02 02:00:00", zone: "Europe/Berlin"),
]

/// Daylight-saving transitions, as proxmox-time computes them on glibc
/// (checked against its algorithm in C with mktime): a local time that does
/// not exist is skipped; one that exists twice happens at both occurrences.
/// Expected values are UTC instants, which tell the two occurrences apart.
struct DSTCase: Sendable, CustomTestStringConvertible {
    var event: String
    var zone: String
    var startUTC: String
    var expectedUTC: [String]
    var testDescription: String { "'\(event)' \(zone) after \(startUTC)Z" }
    init(_ event: String, _ zone: String, _ startUTC: String, _ expectedUTC: String...) {
        self.event = event
        self.zone = zone
        self.startUTC = startUTC
        self.expectedUTC = expectedUTC
    }
}

let dstCases: [DSTCase] = [
    // Europe/Berlin, 2024-03-31: 02:00 CET → 03:00 CEST. 02:30 does not exist that night.
    DSTCase("02:30", "Europe/Berlin", "2024-03-30 11:00:00", "2024-04-01 00:30:00", "2024-04-02 00:30:00"),
    DSTCase("01:30", "Europe/Berlin", "2024-03-30 23:00:00", "2024-03-31 00:30:00", "2024-03-31 23:30:00"),
    DSTCase("*:30", "Europe/Berlin", "2024-03-30 23:00:00", "2024-03-30 23:30:00", "2024-03-31 00:30:00", "2024-03-31 01:30:00",
            "2024-03-31 02:30:00"),
    DSTCase("*/15", "Europe/Berlin", "2024-03-31 00:40:00", "2024-03-31 00:45:00", "2024-03-31 01:00:00", "2024-03-31 01:15:00"),
    DSTCase("2:0/15", "Europe/Berlin", "2024-03-30 22:00:00", "2024-04-01 00:00:00", "2024-04-01 00:15:00"),
    // Europe/Berlin, 2024-10-27: 03:00 CEST → 02:00 CET. 02:xx happens twice.
    DSTCase("02:30", "Europe/Berlin", "2024-10-26 12:00:00", "2024-10-27 00:30:00", "2024-10-27 01:30:00", "2024-10-28 01:30:00"),
    DSTCase("01:30", "Europe/Berlin", "2024-10-26 12:00:00", "2024-10-26 23:30:00", "2024-10-28 00:30:00"),
    DSTCase("*/30", "Europe/Berlin", "2024-10-26 23:50:00", "2024-10-27 00:00:00", "2024-10-27 00:30:00", "2024-10-27 01:00:00",
            "2024-10-27 01:30:00", "2024-10-27 02:00:00"),
    DSTCase("2:0/15", "Europe/Berlin", "2024-10-26 12:00:00", "2024-10-27 00:00:00", "2024-10-27 00:15:00", "2024-10-27 00:30:00",
            "2024-10-27 00:45:00", "2024-10-27 01:00:00", "2024-10-27 01:15:00", "2024-10-27 01:30:00", "2024-10-27 01:45:00",
            "2024-10-28 01:00:00"),
    DSTCase("daily", "Europe/Berlin", "2024-10-26 12:00:00", "2024-10-26 22:00:00", "2024-10-27 23:00:00"),
    // America/New_York, 2024-03-10: 02:00 EST → 03:00 EDT.
    DSTCase("02:30", "America/New_York", "2024-03-09 12:00:00", "2024-03-11 06:30:00"),
    DSTCase("*:30", "America/New_York", "2024-03-10 05:00:00", "2024-03-10 05:30:00", "2024-03-10 06:30:00", "2024-03-10 07:30:00"),
    DSTCase("mon..sun 1..3:00", "America/New_York", "2024-03-10 05:00:00", "2024-03-10 06:00:00", "2024-03-10 07:00:00",
            "2024-03-11 05:00:00"),
    // America/New_York, 2024-11-03: 02:00 EDT → 01:00 EST. 01:xx happens twice.
    DSTCase("01:30", "America/New_York", "2024-11-02 12:00:00", "2024-11-03 05:30:00", "2024-11-03 06:30:00", "2024-11-04 06:30:00"),
    DSTCase("02:30", "America/New_York", "2024-11-02 12:00:00", "2024-11-03 07:30:00", "2024-11-04 07:30:00"),
    DSTCase("*/15", "America/New_York", "2024-11-03 05:40:00", "2024-11-03 05:45:00", "2024-11-03 06:00:00", "2024-11-03 06:15:00"),
]

@Suite struct CalendarEventEvaluationTests {
    @Test(arguments: proxmoxCases)
    func proxmoxTable(_ c: NextCase) throws {
        #expect(try upcoming(c) == c.expected)
    }

    @Test(arguments: moreCases)
    func moreEvents(_ c: NextCase) throws {
        #expect(try upcoming(c) == c.expected)
    }

    @Test(arguments: dstCases)
    func daylightSaving(_ c: DSTCase) throws {
        let e = try CalendarEvent(c.event)
        let got = e.upcoming(after: at(c.startUTC), count: c.expectedUTC.count, in: tz(c.zone)).map { CivilTime($0, .utc).spaced }
        #expect(got == c.expectedUTC)
    }

    @Test(arguments: ["2021-02-29", "02-30", "*-04-31", "2100-02-29", "2019-01-01", "fri 2024-01-01", "*-02-30..31 12:00"])
    func never(_ event: String) throws {
        let e = try CalendarEvent(event)
        #expect(e.next(after: at("2020-01-01 00:00:00"), in: tz("Europe/Berlin")) == nil)
    }

    @Test func strictlyAfterAndWholeSeconds() throws {
        let e = try CalendarEvent("*:*:*")
        let t = at("2024-01-01 00:00:00").addingTimeInterval(0.25)
        #expect(e.next(after: t, in: tz("UTC")) == at("2024-01-01 00:00:01"))
        let d = try CalendarEvent("02:00")
        #expect(d.next(after: at("2024-01-01 02:00:00"), in: tz("UTC")) == at("2024-01-02 02:00:00"))
        #expect(d.next(after: at("2024-01-01 01:59:59"), in: tz("UTC")) == at("2024-01-01 02:00:00"))
        #expect(d.matches(at("2024-01-01 02:00:00"), in: tz("UTC")))
        #expect(!d.matches(at("2024-01-01 02:01:00"), in: tz("UTC")))
    }

    /// Skipping by fields: far-away and never-firing events are answered at once.
    @Test func efficient() throws {
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for text in ["2199-12-31 23:59:59", "mon *-02-29", "fri *-*-13 13:13:13", "02-30", "2100-02-29"] {
                let e = try CalendarEvent(text)
                for zone in ["UTC", "Europe/Berlin", "America/New_York"] {
                    _ = e.next(after: at("2025-01-01 00:00:00"), in: tz(zone))
                }
            }
            let every = try CalendarEvent("*:*:*")
            _ = every.upcoming(after: at("2025-01-01 00:00:00"), count: 2000, in: tz("Europe/Berlin"))
        }
        #expect(elapsed < .seconds(5))
        #expect(try CalendarEvent("2199-12-31 23:59:59").next(after: at("2025-01-01 00:00:00"), in: tz("Europe/Berlin"))
                == at("2199-12-31 23:59:59", "Europe/Berlin"))
    }
}

@Suite struct CalendarEventSyntaxTests {
    struct Bad: Sendable, CustomTestStringConvertible {
        var event: String
        var part: String
        var message: String
        var testDescription: String { "'\(event)'" }
        init(_ event: String, _ part: String, _ message: String) {
            self.event = event
            self.part = part
            self.message = message
        }
    }

    static let invalid: [Bad] = [
        Bad("", "", "empty"),
        Bad("   ", "", "empty"),
        Bad("mon..fry", "fry", "'fry' is not a weekday"),
        Bad("mon..fry 02:00", "fry", "'fry' is not a weekday"),
        Bad("25:00", "25", "hour 25 is out of range 0..23"),
        Bad("12:60", "60", "minute 60 is out of range 0..59"),
        Bad("12:00:60", "60", "second 60 is out of range"),
        Bad("*-13-01", "13", "month 13 is out of range 1..12"),
        Bad("*-0-01", "0", "month 0 is out of range"),
        Bad("*-02-32", "32", "day 32 is out of range 1..31"),
        Bad("2200-01-01", "2200", "year 2200 is out of range"),
        Bad("17..8:00", "17..8", "range start 17 is bigger than end 8"),
        Bad("*/0", "*/0", "a step must be at least 1"),
        Bad("5/0", "5/0", "a step must be at least 1"),
        Bad("*/61", "61", "step 61 is larger than the minute range"),
        Bad("daily 02:00", "daily", "stands alone"),
        Bad("02:00 daily", "daily", "stands alone"),
        Bad("02:00 mon", "mon", "weekdays must come first"),
        Bad("dayly", "dayly", "unknown keyword or weekday 'dayly'"),
        Bad("Daily", "Daily", "keywords are lower case: 'daily'"),
        Bad("1:2:3:4", "1:2:3:4", "a time is [H:]M[:S]"),
        Bad("*,5", "*", "'*' stands alone"),
        Bad("2024-01-01-01", "2024-01-01-01", "a date is [Y-]M-D"),
        Bad("mon,,tue", "mon,,tue", "empty item in the weekday list"),
        Bad("12:0a", "0a", "'0a' is not a number"),
        Bad("1.5", "1.5", "'1.5' is not a number"),
        Bad("12:", "", "missing minute"),
        Bad("mon 2024-01-01 02:00 03:00", "03:00", "unexpected '03:00'"),
        Bad("mon 02:00 2024-01-01", "2024-01-01", "unexpected"),
        Bad("02:00 2024-01-01", "2024-01-01", "unexpected '2024-01-01'"),
        Bad("2024-01-01 2024-01-02", "2024-01-02", "a second date"),
        Bad("*-1..7 sat", "sat", "weekdays must come first"),
        Bad("UTC 02:00", "UTC", "unknown keyword or weekday 'UTC'"),
        Bad("1..2..3", "1..2..3", "a range is 'a..b'"),
        Bad("mon..tue..wed", "mon..tue..wed", "a weekday range is 'mon..fri'"),
    ]

    @Test(arguments: invalid)
    func rejected(_ b: Bad) {
        do {
            _ = try CalendarEvent(b.event)
            Issue.record("'\(b.event)' was accepted")
        } catch let e as CalendarEventError {
            #expect(e.part == b.part || (b.part.isEmpty && e.part == b.event.trimmingCharacters(in: .whitespaces)), "\(e)")
            #expect(e.message.contains(b.message), "\(e)")
            #expect(e.description.hasPrefix("invalid calendar event '\(b.event)'"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func errorPointsAtThePart() throws {
        let e = try #require(throws: CalendarEventError.self) { try CalendarEvent("mon..fry 02:00") }
        #expect(e.column == 6)
        #expect(e.description == "invalid calendar event 'mon..fry 02:00' at 'fry' (column 6): 'fry' is not a weekday (mon, tue, wed, thu, fri, sat, sun)")
        #expect(e.pointer == "  mon..fry 02:00\n       ^^^")
        let h = try #require(throws: CalendarEventError.self) { try CalendarEvent("sat 8..17,25:00") }
        #expect(h.part == "25" && h.column == 11)
    }

    struct Cron: Sendable, CustomTestStringConvertible {
        var cron: String
        var equivalent: String?
        var testDescription: String { "'\(cron)'" }
    }

    static let cron: [Cron] = [
        Cron(cron: "0 2 * * *", equivalent: "02:00"),
        Cron(cron: "30 23 * * *", equivalent: "23:30"),
        Cron(cron: "*/5 * * * *", equivalent: "*/5"),
        Cron(cron: "30 * * * *", equivalent: "*:30"),
        Cron(cron: "* * * * *", equivalent: "*"),
        Cron(cron: "0 22 * * 1-5", equivalent: "mon..fri 22:00"),
        Cron(cron: "15 3 * * 0", equivalent: "sun 03:15"),
        Cron(cron: "15 3 * * 7", equivalent: "sun 03:15"),
        Cron(cron: "0 2 * * sat,sun", equivalent: "sat,sun 02:00"),
        Cron(cron: "0,30 8-17 * * mon-fri", equivalent: "mon..fri 8..17:0,30"),
        Cron(cron: "0 0 1 * *", equivalent: "*-*-1 00:00"),
        Cron(cron: "0 2 1 1 *", equivalent: "*-1-1 02:00"),
        Cron(cron: "0 4 1 jan,jul *", equivalent: "*-1,7-1 04:00"),
        Cron(cron: "0 */2 * * *", equivalent: "*/2:00"),
        Cron(cron: "0 2 1 * 1", equivalent: nil), // cron: day 1 OR Monday
        Cron(cron: "0 2 * * 1/2", equivalent: nil),
        Cron(cron: "0 2 L * *", equivalent: nil),
        Cron(cron: "0 0 2 * * *", equivalent: nil),
        Cron(cron: "@daily", equivalent: "daily"),
        Cron(cron: "@midnight", equivalent: "daily"),
        Cron(cron: "@hourly", equivalent: "hourly"),
        Cron(cron: "@weekly", equivalent: "sun 00:00"),
        Cron(cron: "@monthly", equivalent: "monthly"),
        Cron(cron: "@yearly", equivalent: "yearly"),
        Cron(cron: "@reboot", equivalent: nil),
    ]

    @Test(arguments: cron)
    func cronRejected(_ c: Cron) throws {
        let e = try #require(throws: CalendarEventError.self) { try CalendarEvent(c.cron) }
        #expect(e.message.contains("cron syntax"))
        #expect(e.suggestion == c.equivalent)
        if let eq = c.equivalent {
            #expect(e.message.contains("write '\(eq)'"))
            #expect(CalendarEvent.isValid(eq))
        } else {
            #expect(e.message.contains("[weekdays] [[Y-]M-D] [H:]M[:S]"))
        }
    }

    /// The suggested event means what the cron line meant.
    @Test func cronEquivalentsAgree() throws {
        let e = try #require(throws: CalendarEventError.self) { try CalendarEvent("0,30 8-17 * * mon-fri") }
        let ev = try CalendarEvent(e.suggestion!)
        let got = ev.upcoming(after: at("2026-05-01 16:45:00"), count: 4, in: tz("UTC")).map { CivilTime($0, .utc).spaced }
        #expect(got == ["2026-05-01 17:00:00", "2026-05-01 17:30:00", "2026-05-04 08:00:00", "2026-05-04 08:30:00"])
    }

    @Test(arguments: ["sat 02:00", "mon..fri 8..17,22:0/15", "Sat *-1..7 15:00", "*/5", "daily", "weekly", "yearly", "annually",
                      "quarterly", "semiannually", "semi-annually", "minutely", "hourly", "monthly", "2026-12-24", "*-1..7",
                      "12-24 18:00", "*:*:*", "0", "59", "23:59:59", "fri..mon", "mon,wed,fri 0/2:0", "02:00 UTC", "daily UTC",
                      "*/2-*-* 0:0", "1970..2199/10-1-1", "sunday", "tUe 1:1:1"])
    func accepted(_ event: String) throws {
        let e = try CalendarEvent(event)
        #expect(e.text == event)
        #expect(e.next(after: at("2025-01-01 00:00:00"), in: tz("Europe/Berlin")) != nil)
    }
}
