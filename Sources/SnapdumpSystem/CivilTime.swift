#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A moment as a date and a wall-clock time in some zone (proleptic Gregorian
/// calendar, whole seconds), and the texts snapdump writes and reads for it —
/// formatted and parsed here by hand, without ICU. Foundation's `DateFormatter`,
/// `Calendar` and `TimeZone.current` load ICU's locale, calendar and zone data
/// the first time a process uses them: ~7 ms of CPU, serial, of a 140 ms
/// incremental backup, and of every command that logs.
///
/// Local time is the C library's (`localtime_r`: `TZ`, else /etc/localtime, as
/// vzdump's Perl `localtime` reads it); a Foundation `TimeZone` can still be
/// named (`Zone.foundation`), for callers and tests that need a given zone.
///
/// Day arithmetic: the days-from-civil / civil-from-days algorithms of Howard
/// Hinnant's "chrono-Compatible Low-Level Date Algorithms" (exact for every
/// Int64 second a backup can carry, past 2038).
public struct CivilTime: Hashable, Sendable, CustomStringConvertible {
    public var year: Int
    /// 1…12
    public var month: Int
    /// 1…31
    public var day: Int
    public var hour: Int
    public var minute: Int
    public var second: Int
    /// Seconds east of UTC in effect at this moment in its zone (0 in UTC,
    /// 3600 in Vienna in winter). For fields parsed without an offset it is 0
    /// and `seconds(in:)` says which moment they are in a zone.
    public var utcOffset: Int

    /// Where the wall clock hangs.
    public enum Zone: Sendable {
        case utc
        /// The C library's local time (`localtime_r`): the zone of `TZ`, else
        /// of /etc/localtime (UTC without either), read once per process.
        case local
        /// A fixed offset, seconds east of UTC.
        case fixed(seconds: Int)
        /// A Foundation zone's offsets (ICU's rules: not for the backup path).
        case foundation(TimeZone)

        /// The zone a `TimeZone?` parameter names: nil is local time.
        public init(_ timeZone: TimeZone?) {
            self = timeZone.map { .foundation($0) } ?? .local
        }

        /// Seconds east of UTC in this zone at Unix time `t`.
        public func utcOffset(at t: Int64) -> Int {
            switch self {
            case .utc: return 0
            case .fixed(let s): return s
            case .foundation(let tz): return tz.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(t)))
            case .local:
                var tt = time_t(t)
                var fields = tm()
                guard localtime_r(&tt, &fields) != nil else { return 0 }
                return Int(fields.tm_gmtoff)
            }
        }
    }

    /// The years a time given by a user (`--starttime`) may name and the
    /// scheduler computes in: bounded so that seconds since the epoch never
    /// overflow (`--starttime` far in the future).
    public static let supportedYears = 1...9999
    /// The Unix times of `supportedYears` (one day of margin at each end for
    /// time zones), as a `Date`'s `timeIntervalSince1970`.
    public static let supportedSeconds: ClosedRange<Double> = (-62_135_596_800 + 86400)...(253_402_300_799 - 86400)

    /// Fields as they are (not checked: see `isValid`).
    public init(year: Int, month: Int, day: Int, hour: Int = 0, minute: Int = 0, second: Int = 0, utcOffset: Int = 0) {
        self.year = year
        self.month = month
        self.day = day
        self.hour = hour
        self.minute = minute
        self.second = second
        self.utcOffset = utcOffset
    }

    /// Unix time `t` on the wall clock of `zone`.
    public init(_ t: Int64, _ zone: Zone = .utc) {
        self.init(unix: t, utcOffset: zone.utcOffset(at: t))
    }

    /// `date` (whole seconds, rounded down as DateFormatter does) on the wall clock of `zone`.
    public init(_ date: Date, _ zone: Zone = .utc) {
        self.init(Self.unixSeconds(date), zone)
    }

    /// The current time on the wall clock of `zone`.
    public static func now(_ zone: Zone = .local) -> CivilTime {
        CivilTime(Int64(time(nil)), zone)
    }

    private init(unix t: Int64, utcOffset: Int) {
        let wall = t + Int64(utcOffset)
        let days = Self.floorDiv(wall, 86400)
        let secs = Int(wall - days * 86400)
        let (y, m, d) = Self.civil(fromDays: days)
        self.init(year: y, month: m, day: d, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60, utcOffset: utcOffset)
    }

    /// Whether the fields name a real date and time (no 31 April, no 29
    /// February outside leap years, hour < 24, minute and second < 60).
    public var isValid: Bool {
        (1...12).contains(month) && day >= 1 && day <= Self.daysIn(month: month, year: year)
            && (0..<24).contains(hour) && (0..<60).contains(minute) && (0..<60).contains(second)
    }

    /// The moment: the fields minus `utcOffset`, as Unix seconds.
    public var seconds: Int64 { wallSeconds - Int64(utcOffset) }

    public var date: Date { Date(timeIntervalSince1970: TimeInterval(seconds)) }

    /// Day of the week, 0 = Sunday … 6 = Saturday (as `tm_wday`).
    public var weekday: Int {
        Int(((Self.days(year: year, month: month, day: day) % 7) + 11) % 7)
    }

    /// The fields read as if they were UTC.
    var wallSeconds: Int64 {
        Self.days(year: year, month: month, day: day) * 86400 + Int64(hour * 3600 + minute * 60 + second)
    }

    /// Which moment these wall-clock fields (their `utcOffset` ignored) are in
    /// `zone`, as Foundation's `Calendar.date(from:)` decides it: a time that
    /// occurs twice when the clocks go back is the first of the two; a time
    /// the clocks skip is read with the offset before the change (02:30 on the
    /// morning clocks go from 02:00 to 03:00 is 03:30).
    public func seconds(in zone: Zone) -> Int64 {
        let wall = wallSeconds
        // Offsets change at most once in the ±1 day around a time (every zone's rules so far).
        let before = zone.utcOffset(at: wall - 86400), after = zone.utcOffset(at: wall + 86400)
        var candidates: [Int64] = []
        for off in [before, zone.utcOffset(at: wall), after] {
            let t = wall - Int64(off)
            if zone.utcOffset(at: t) == off && !candidates.contains(t) { candidates.append(t) }
        }
        if let first = candidates.min() { return first }
        return wall - Int64(before)
    }

    // MARK: formats

    /// `2026-11-30 02:00:00`: task logs, the daemon's log, listings.
    public var spaced: String {
        text { t in
            t.number(year, 4); t.byte("-"); t.number(month, 2); t.byte("-"); t.number(day, 2); t.byte(" ")
            t.clock(self, ":")
        }
    }

    /// `2026_11_30-02_00_00`: vzdump archive names.
    public var underscored: String {
        text { t in
            t.number(year, 4); t.byte("_"); t.number(month, 2); t.byte("_"); t.number(day, 2); t.byte("-")
            t.clock(self, "_")
        }
    }

    /// `20261130T020000Z` (ISO 8601 basic format, in UTC whatever the zone): base snapshot names.
    public var basicUTC: String {
        guard utcOffset == 0 else { return CivilTime(seconds, .utc).basicUTC }
        return text { t in
            t.number(year, 4); t.number(month, 2); t.number(day, 2); t.byte("T")
            t.number(hour, 2); t.number(minute, 2); t.number(second, 2); t.byte("Z")
        }
    }

    /// `2026-11-30T02:00:00Z` (ISO 8601 extended format, in UTC whatever the zone): repository snapshot names.
    public var extendedUTC: String {
        guard utcOffset == 0 else { return CivilTime(seconds, .utc).extendedUTC }
        return text { t in
            t.number(year, 4); t.byte("-"); t.number(month, 2); t.byte("-"); t.number(day, 2); t.byte("T")
            t.clock(self, ":"); t.byte("Z")
        }
    }

    /// `Mon, 30 Nov 2026 03:00:00 +0100` (RFC 5322 section 3.3 date-time): mail headers.
    public var rfc5322: String {
        text { t in
            t.ascii(Self.weekdayNames[weekday]); t.byte(","); t.byte(" ")
            t.number(day, 2); t.byte(" "); t.ascii(Self.monthNames[month - 1]); t.byte(" "); t.number(year, 4); t.byte(" ")
            t.clock(self, ":"); t.byte(" "); t.offset(utcOffset)
        }
    }

    /// `Mon Nov  2 03:00:00 2026`: C's `ctime` without the newline (the day space-padded).
    public var ctime: String {
        text { t in
            t.ascii(Self.weekdayNames[weekday]); t.byte(" "); t.ascii(Self.monthNames[month - 1]); t.byte(" ")
            if day < 10 { t.byte(" ") }
            t.number(day, 1); t.byte(" "); t.clock(self, ":"); t.byte(" "); t.number(year, 4)
        }
    }

    /// `+0100`, `-0530`: the offset as RFC 5322 and `btrfs subvolume show` write it.
    public var offsetText: String { text { $0.offset(utcOffset) } }

    public var description: String { spaced + " " + offsetText }

    // MARK: parsing (exact shapes, `lenient` aside: wrong length, a non-digit, or an impossible date is nil)

    /// `20261130T020000Z` (UTC).
    public init?(basicUTC s: String) {
        var p = FieldScanner(s)
        guard let y = p.digits(4), let mo = p.digits(2), let d = p.digits(2), p.literal("T"),
              let h = p.digits(2), let mi = p.digits(2), let se = p.digits(2), p.literal("Z"), p.atEnd else { return nil }
        self.init(checked: y, mo, d, h, mi, se, 0)
    }

    /// `2026-11-30T02:00:00Z` (UTC).
    public init?(extendedUTC s: String) {
        var p = FieldScanner(s)
        guard let d = p.date("-"), p.literal("T"), let c = p.clock(":"), p.literal("Z"), p.atEnd else { return nil }
        self.init(checked: d.0, d.1, d.2, c.0, c.1, c.2, 0)
    }

    /// `2026_11_30-02_00_00`: wall-clock fields without a zone (`seconds(in:)` places them).
    public init?(underscored s: String) {
        var p = FieldScanner(s)
        guard let d = p.date("_"), p.literal("-"), let c = p.clock("_"), p.atEnd else { return nil }
        self.init(checked: d.0, d.1, d.2, c.0, c.1, c.2, 0)
    }

    /// `2026-11-30 03:00:00 +0100` (`btrfs subvolume show`'s creation time); with
    /// `offset: false`, `2026-11-30 03:00:00` as wall-clock fields without a zone.
    public init?(spaced s: String, offset: Bool) {
        var p = FieldScanner(s)
        guard let d = p.date("-"), p.literal(" "), let c = p.clock(":") else { return nil }
        var off = 0
        if offset {
            guard p.literal(" "), let o = p.offset() else { return nil }
            off = o
        }
        guard p.atEnd else { return nil }
        self.init(checked: d.0, d.1, d.2, c.0, c.1, c.2, off)
    }

    /// `2026-11-30 02:00:00`, `2026-11-30 02:00`, `2026-11-30T02:00[:00]` or
    /// `2026-11-30` (midnight), as a user types a time (`--starttime`): fields
    /// of one or more digits, blanks around and between date and time, years
    /// in `supportedYears`. Wall-clock fields without a zone (`seconds(in:)`
    /// places them).
    public init?(lenient s: String) {
        var p = FieldScanner(s)
        p.skipBlanks()
        guard let y = p.number(), p.literal("-"), let mo = p.number(), p.literal("-"), let d = p.number() else { return nil }
        var (h, mi, se) = (0, 0, 0)
        let blanks = p.skipBlanks()
        if !p.atEnd {
            guard blanks || p.literal("T"), let hour = p.number(), p.literal(":"), let minute = p.number() else { return nil }
            (h, mi) = (hour, minute)
            if p.literal(":") {
                guard let second = p.number() else { return nil }
                se = second
            }
            p.skipBlanks()
            guard p.atEnd else { return nil }
        }
        guard Self.supportedYears.contains(y) else { return nil }
        self.init(checked: y, mo, d, h, mi, se, 0)
    }

    private init?(checked y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ se: Int, _ off: Int) {
        self.init(year: y, month: mo, day: d, hour: h, minute: mi, second: se, utcOffset: off)
        guard isValid else { return nil }
    }

    // MARK: calendar arithmetic

    public static func isLeapYear(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    public static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
    public static func days(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = Int64(month > 2 ? month - 3 : month + 9)
        let doy = (153 * mp + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01 (Hinnant's `civil_from_days`).
    public static func civil(fromDays days: Int64) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (Int(yoe + era * 400 + (m <= 2 ? 1 : 0)), Int(m), Int(d))
    }

    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }

    /// Whole Unix seconds of `date`, rounded down.
    public static func unixSeconds(_ date: Date) -> Int64 {
        let s = date.timeIntervalSince1970.rounded(.down)
        guard s.isFinite, s > -9.2e18, s < 9.2e18 else { return 0 }
        return Int64(s)
    }

    static let weekdayNames = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let monthNames = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    private func text(_ build: (inout TextBuilder) -> Void) -> String {
        var t = TextBuilder()
        build(&t)
        return String(decoding: t.bytes, as: UTF8.self)
    }
}

/// ASCII bytes of a formatted time.
private struct TextBuilder {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(32) }

    mutating func byte(_ c: Unicode.Scalar) { bytes.append(UInt8(ascii: c)) }

    mutating func ascii(_ s: String) { bytes.append(contentsOf: s.utf8) }

    /// `v` in decimal, zero-padded to `width` digits (a minus sign in front of negative values).
    mutating func number(_ v: Int, _ width: Int) {
        if v < 0 { byte("-") }
        var digits: [UInt8] = []
        var n = v.magnitude
        repeat {
            digits.append(UInt8(48 + n % 10))
            n /= 10
        } while n > 0
        for _ in digits.count..<max(width, digits.count) { bytes.append(48) }
        bytes.append(contentsOf: digits.reversed())
    }

    mutating func clock(_ c: CivilTime, _ separator: Unicode.Scalar) {
        number(c.hour, 2); byte(separator); number(c.minute, 2); byte(separator); number(c.second, 2)
    }

    mutating func offset(_ seconds: Int) {
        byte(seconds < 0 ? "-" : "+")
        let m = abs(seconds) / 60
        number(m / 60, 2)
        number(m % 60, 2)
    }
}

/// Reads fixed-width fields from ASCII text.
private struct FieldScanner {
    let u: [UInt8]
    var i = 0

    init(_ s: String) { u = Array(s.utf8) }

    var atEnd: Bool { i == u.count }

    mutating func literal(_ c: Unicode.Scalar) -> Bool {
        guard i < u.count, u[i] == UInt8(ascii: c) else { return false }
        i += 1
        return true
    }

    mutating func digits(_ n: Int) -> Int? {
        guard i + n <= u.count else { return nil }
        var v = 0
        for c in u[i..<i + n] {
            guard c >= 48 && c <= 57 else { return nil }
            v = v * 10 + Int(c - 48)
        }
        i += n
        return v
    }

    /// 1…9 digits (more are no field of a date).
    mutating func number() -> Int? {
        var v = 0, n = 0
        while i < u.count, u[i] >= 48 && u[i] <= 57 {
            guard n < 9 else { return nil }
            v = v * 10 + Int(u[i] - 48)
            n += 1
            i += 1
        }
        return n > 0 ? v : nil
    }

    /// Skips spaces and tabs; whether there were any.
    @discardableResult
    mutating func skipBlanks() -> Bool {
        let start = i
        while i < u.count, u[i] == 32 || u[i] == 9 { i += 1 }
        return i > start
    }

    mutating func date(_ sep: Unicode.Scalar) -> (Int, Int, Int)? {
        guard let y = digits(4), literal(sep), let m = digits(2), literal(sep), let d = digits(2) else { return nil }
        return (y, m, d)
    }

    mutating func clock(_ sep: Unicode.Scalar) -> (Int, Int, Int)? {
        guard let h = digits(2), literal(sep), let m = digits(2), literal(sep), let s = digits(2) else { return nil }
        return (h, m, s)
    }

    /// `+hhmm` / `-hhmm` in seconds.
    mutating func offset() -> Int? {
        let sign: Int
        if literal("+") { sign = 1 } else if literal("-") { sign = -1 } else { return nil }
        guard let h = digits(2), let m = digits(2), h < 24, m < 60 else { return nil }
        return sign * (h * 3600 + m * 60)
    }
}
