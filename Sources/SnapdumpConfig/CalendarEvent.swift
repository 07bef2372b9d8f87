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
        /// Whether `weekday` (0 = Sunday … 6 = Saturday, as `CivilTime.weekday`) is one of them.
        func contains(_ weekday: Int) -> Bool { bits == 0 || bits & (1 << ((weekday + 6) % 7)) != 0 }
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
        // Outside CivilTime's years the arithmetic below would overflow; nothing fires there anyway (years ≤ 2199).
        guard CivilTime.supportedSeconds.contains(date.timeIntervalSince1970) else { return nil }
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
            let start = CivilTime(t + offset)
            if let match = firstMatch(atOrAfter: start) {
                let instant = match.seconds - offset
                if end == nil || instant < end! { return Date(timeIntervalSince1970: TimeInterval(instant)) }
            } else if firstMatch(atOrAfter: CivilTime(t + offset - 86400)) == nil {
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

    /// The first wall-clock time (a `CivilTime` whose `utcOffset` is 0) ≥
    /// `start` whose fields all match, ignoring time zones. Years repeat the Gregorian pattern every 400 years, so 400
    /// candidate years without a match mean "never".
    func firstMatch(atOrAfter start: CivilTime) -> CivilTime? {
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

    private func match(inYear y: Int, from: CivilTime?) -> CivilTime? {
        var month = months.first(atLeast: from?.month ?? 1)
        while let m = month {
            let onMonth = from != nil && m == from!.month
            let dim = CivilTime.daysIn(month: m, year: y)
            var day = days.first(atLeast: onMonth ? from!.day : 1)
            while let d = day, d <= dim {
                if weekdays.bits == 0 || weekdays.contains(CivilTime(year: y, month: m, day: d).weekday) {
                    let onDay = onMonth && d == from!.day
                    if let (h, mi, s) = firstTime(from: onDay ? (from!.hour, from!.minute, from!.second) : nil) {
                        return CivilTime(year: y, month: m, day: d, hour: h, minute: mi, second: s)
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
