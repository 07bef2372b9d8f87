import Foundation
import SnapdumpSystem

/// A Proxmox calendar event (`schedule` in jobs.cfg), as proxmox-time parses
/// and evaluates it:
///
///     [weekdays] [[Y-]M-D] [H:]M[:S] [UTC]
///
/// Each field is `*` or a comma list of `n`, `a..b`, `n/step`, `a..b/step`,
/// `*/step`. A bare number is minutes (`5` = at minute 5 of every hour,
/// `*/5` = every five minutes); hours default to `*`, seconds to `0`;
/// without a time the event fires at `00:00`. Weekdays are `mon`…`sun` or
/// full names, in lists and ranges (`mon..fri`, `fri..mon` wraps). Keywords:
/// minutely, hourly, daily, weekly (Monday), monthly, yearly / annually,
/// quarterly, semiannually / semi-annually. Cron syntax (`0 2 * * *`) is
/// rejected with the equivalent event when there is an obvious one.
///
/// Time zones: the event is evaluated in local wall-clock time (or UTC with
/// the `UTC` suffix). An instant matches when its local date and time match.
/// So, as with proxmox-time on glibc:
/// - a local time that does not exist (the hour skipped when clocks go
///   forward) never happens — `02:30` does not run that night, and is not
///   moved to 03:30;
/// - a local time that exists twice (the hour repeated when clocks go back)
///   happens at both occurrences — `02:30` runs at 02:30 summer time and again
///   at 02:30 winter time in Europe/Berlin; `*/15` keeps firing every 15 real
///   minutes through the repeated hour.
///
/// Evaluation skips by fields (year, month, day, hour, minute, second) and by
/// UTC-offset segments between the zone's transitions, never minute by minute.
public struct CalendarEvent: Sendable, Equatable, CustomStringConvertible {
    /// The text as written.
    public let text: String
    /// Evaluated in UTC instead of the given time zone (`… UTC`).
    public let utc: Bool

    let weekdays: Weekdays
    let years: [Value]
    let months: FieldSet
    let days: FieldSet
    let hours: FieldSet
    let minutes: FieldSet
    let seconds: FieldSet

    public var description: String { text }

    /// One item of a field's list.
    enum Value: Equatable, Sendable {
        case single(Int)
        case range(Int, Int)
        /// `start/step` or `start..end/step`.
        case repeated(start: Int, step: Int, end: Int?)

        func contains(_ v: Int) -> Bool {
            switch self {
            case .single(let s): return v == s
            case .range(let a, let b): return v >= a && v <= b
            case .repeated(let a, let step, let end):
                return v >= a && (v - a) % step == 0 && (end.map { v <= $0 } ?? true)
            }
        }

        /// The smallest value ≥ `v` this item contains.
        func first(atLeast v: Int) -> Int? {
            switch self {
            case .single(let s): return s >= v ? s : nil
            case .range(let a, let b): return v <= b ? max(a, v) : nil
            case .repeated(let a, let step, let end):
                let n = v <= a ? a : a + ((v - a + step - 1) / step) * step
                if let end, n > end { return nil }
                return n
            }
        }
    }

    /// The allowed values of a bounded field, ascending (empty list = all).
    struct FieldSet: Equatable, Sendable {
        let values: [Int]
        init(_ items: [Value], range: ClosedRange<Int>) {
            values = items.isEmpty ? Array(range) : range.filter { v in items.contains { $0.contains(v) } }
        }
        /// The smallest allowed value ≥ `v`.
        func first(atLeast v: Int) -> Int? {
            var lo = 0, hi = values.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if values[mid] < v { lo = mid + 1 } else { hi = mid }
            }
            return lo < values.count ? values[lo] : nil
        }
    }

    /// Monday = bit 0 … Sunday = bit 6; 0 means every day.
    struct Weekdays: Equatable, Sendable {
        var bits: UInt8 = 0
        func contains(mondayBased day: Int) -> Bool { bits == 0 || bits & (1 << day) != 0 }
    }

    static let weekdayNames = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    static let weekdayLongNames = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

    /// Parses `text`; throws a `CalendarEventError` naming the offending part.
    public init(_ text: String) throws {
        let p = try CalendarEventParser(text).parse()
        self.text = text
        utc = p.utc
        weekdays = p.weekdays
        years = p.years
        months = FieldSet(p.months, range: 1...12)
        days = FieldSet(p.days, range: 1...31)
        hours = FieldSet(p.hours, range: 0...23)
        minutes = FieldSet(p.minutes, range: 0...59)
        seconds = FieldSet(p.seconds, range: 0...59)
    }

    /// Whether `text` is a valid calendar event.
    public static func isValid(_ text: String) -> Bool { (try? CalendarEvent(text)) != nil }

    // MARK: - Evaluation

    /// The first instant strictly after `date` (in whole seconds) at which the
    /// event fires, evaluated in `timeZone` (ignored for `… UTC` events), or
    /// nil when it never fires again (`2021-02-29`, `02-30`).
    public func next(after date: Date, in timeZone: TimeZone = .current) -> Date? {
        // Outside Civil's years the arithmetic below would overflow; nothing fires there anyway (years ≤ 2199).
        guard Civil.supportedSeconds.contains(date.timeIntervalSince1970) else { return nil }
        let zone = utc ? TimeZone(identifier: "UTC")! : timeZone
        // Whole seconds: the result is > date, so it is ≥ floor(date) + 1.
        var t = Int64(date.timeIntervalSince1970.rounded(.down)) + 1
        // The timeline is cut into segments of constant UTC offset; within a
        // segment local time grows with the instant, so a field search from
        // the segment's local start finds its first match.
        for _ in 0..<4096 {
            let offset = Int64(zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(t))))
            let end = zone.nextDaylightSavingTimeTransition(after: Date(timeIntervalSince1970: TimeInterval(t)))
                .map { Int64($0.timeIntervalSince1970.rounded(.up)) }
            let start = Civil(seconds: t + offset)
            if let match = firstMatch(atOrAfter: start) {
                let instant = match.seconds - offset
                if end == nil || instant < end! { return Date(timeIntervalSince1970: TimeInterval(instant)) }
            } else if firstMatch(atOrAfter: Civil(seconds: t + offset - 86400)) == nil {
                // Later segments start at most a day earlier in local time.
                return nil
            }
            guard let end else { return nil }
            // A later segment may start at an earlier local time (clocks going
            // back), so search again from its start.
            t = max(end, t + 1)
        }
        return nil
    }

    /// The next `count` instants after `date`.
    public func upcoming(after date: Date, count: Int, in timeZone: TimeZone = .current) -> [Date] {
        var out: [Date] = []
        var t = date
        while out.count < count, let n = next(after: t, in: timeZone) {
            out.append(n)
            t = n
        }
        return out
    }

    /// Whether the event fires exactly at `date` (whole second).
    public func matches(_ date: Date, in timeZone: TimeZone = .current) -> Bool {
        next(after: date.addingTimeInterval(-1), in: timeZone) == Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.down))
    }

    /// The first local date-time ≥ `start` whose fields all match, ignoring
    /// time zones. Years repeat the Gregorian pattern every 400 years, so 400
    /// candidate years without a match mean "never".
    func firstMatch(atOrAfter start: Civil) -> Civil? {
        var year = start.year
        var checked = 0
        while checked < 400, let y = nextYear(atLeast: year) {
            checked += 1
            if let m = match(inYear: y, from: y == start.year ? start : nil) { return m }
            year = y + 1
        }
        return nil
    }

    func nextYear(atLeast y: Int) -> Int? {
        if years.isEmpty { return y }
        return years.compactMap { $0.first(atLeast: y) }.min()
    }

    private func match(inYear y: Int, from: Civil?) -> Civil? {
        var month = months.first(atLeast: from?.month ?? 1)
        while let m = month {
            let onMonth = from != nil && m == from!.month
            let dim = Civil.daysInMonth(year: y, month: m)
            var day = days.first(atLeast: onMonth ? from!.day : 1)
            while let d = day, d <= dim {
                if weekdays.bits == 0 || weekdays.contains(mondayBased: Civil.weekday(year: y, month: m, day: d)) {
                    let onDay = onMonth && d == from!.day
                    if let (h, mi, s) = firstTime(from: onDay ? (from!.hour, from!.minute, from!.second) : nil) {
                        return Civil(year: y, month: m, day: d, hour: h, minute: mi, second: s)
                    }
                }
                day = days.first(atLeast: d + 1)
            }
            month = months.first(atLeast: m + 1)
        }
        return nil
    }

    private func firstTime(from: (Int, Int, Int)?) -> (Int, Int, Int)? {
        var hour = hours.first(atLeast: from?.0 ?? 0)
        while let h = hour {
            let onHour = from != nil && h == from!.0
            var minute = minutes.first(atLeast: onHour ? from!.1 : 0)
            while let mi = minute {
                let onMinute = onHour && mi == from!.1
                if let s = seconds.first(atLeast: onMinute ? from!.2 : 0) { return (h, mi, s) }
                minute = minutes.first(atLeast: mi + 1)
            }
            hour = hours.first(atLeast: h + 1)
        }
        return nil
    }
}

/// A local (wall-clock) date and time, without a zone.
public struct Civil: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var year, month, day, hour, minute, second: Int

    /// The years times are given and computed in; bounded so that seconds
    /// since the epoch never overflow (`--starttime` far in the future).
    public static let supportedYears = 1...9999
    /// Seconds since the epoch of `supportedYears` (UTC; one day of margin at each end for time zones).
    public static let supportedSeconds: ClosedRange<Double> = (-62_135_596_800 + 86400)...(253_402_300_799 - 86400)

    public init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0) {
        (self.year, self.month, self.day, self.hour, self.minute, self.second) = (year, month, day, hour, minute, second)
    }

    /// The civil time of `seconds` since 1970-01-01 00:00:00 (of the same clock).
    public init(seconds: Int64) {
        let days = Int(seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400)
        let rem = Int(seconds - Int64(days) * 86400)
        let (y, m, d) = Civil.civil(fromDays: days)
        self.init(year: y, month: m, day: d, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60)
    }

    /// The wall-clock time of `date` in `zone`.
    public init(_ date: Date, in zone: TimeZone) {
        let t = Int64(date.timeIntervalSince1970.rounded(.down))
        self.init(seconds: t + Int64(zone.secondsFromGMT(for: date)))
    }

    /// Seconds since 1970-01-01 00:00:00 of the same clock.
    public var seconds: Int64 {
        Int64(Civil.days(year: year, month: month, day: day)) * 86400 + Int64(hour * 3600 + minute * 60 + second)
    }

    /// The instant this wall-clock time denotes in `zone`: for a time that
    /// exists twice, the first; for one that does not exist (clocks going
    /// forward), the instant the same distance after the gap's start
    /// (02:30 becomes 03:30), as mktime does.
    public func date(in zone: TimeZone) -> Date {
        let local = seconds
        // Try the offsets in force a day before and after; take the earliest consistent one.
        let around = [local - 86400, local + 86400].map { Int64(zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval($0)))) }
        let candidates = Set(around).map { local - $0 }.sorted()
        for t in candidates where Int64(zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(t)))) == local - t {
            return Date(timeIntervalSince1970: TimeInterval(t))
        }
        // In a gap: interpret with the offset before the gap.
        let before = around[0]
        return Date(timeIntervalSince1970: TimeInterval(local - before))
    }

    /// `YYYY-MM-DD HH:MM:SS`.
    public var description: String {
        func p(_ v: Int, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(p(year, 4))-\(p(month, 2))-\(p(day, 2)) \(p(hour, 2)):\(p(minute, 2)):\(p(second, 2))"
    }

    public static func < (a: Civil, b: Civil) -> Bool { a.seconds < b.seconds }

    // The proleptic Gregorian arithmetic is CivilTime's (one algorithm for the scheduler and the formatters).
    public static func isLeapYear(_ y: Int) -> Bool { CivilTime.isLeapYear(y) }

    public static func daysInMonth(year: Int, month: Int) -> Int { CivilTime.daysIn(month: month, year: year) }

    /// 0 = Monday … 6 = Sunday.
    public static func weekday(year: Int, month: Int, day: Int) -> Int {
        Int(((days(year: year, month: month, day: day) + 3) % 7 + 7) % 7) // 1970-01-01 was a Thursday
    }

    /// Days since 1970-01-01 (proleptic Gregorian).
    static func days(year: Int, month: Int, day: Int) -> Int {
        Int(CivilTime.days(year: year, month: month, day: day))
    }

    static func civil(fromDays z0: Int) -> (Int, Int, Int) {
        let c = CivilTime.civil(fromDays: Int64(z0))
        return (c.year, c.month, c.day)
    }

    /// Parses `YYYY-MM-DD HH:MM[:SS]` (also `YYYY-MM-DD` and `…THH:MM`).
    public static func parse(_ text: String) -> Civil? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let parts = t.split(whereSeparator: { $0 == " " || $0 == "T" }).map(String.init)
        guard parts.count == 1 || parts.count == 2 else { return nil }
        let date = parts[0].split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard date.count == 3, let y = date[0], let m = date[1], let d = date[2], supportedYears.contains(y),
              (1...12).contains(m), d >= 1, d <= daysInMonth(year: y, month: m) else { return nil }
        var h = 0, mi = 0, s = 0
        if parts.count == 2 {
            let time = parts[1].split(separator: ":", omittingEmptySubsequences: false).map { Int($0) }
            guard time.count == 2 || time.count == 3, !time.contains(where: { $0 == nil }) else { return nil }
            h = time[0]!; mi = time[1]!; s = time.count == 3 ? time[2]! : 0
            guard (0...23).contains(h), (0...59).contains(mi), (0...59).contains(s) else { return nil }
        }
        return Civil(year: y, month: m, day: d, hour: h, minute: mi, second: s)
    }
}
