/// A calendar event that cannot be parsed. Names the offending part of the
/// text and its column, so `schedule analyze` and jobs.cfg errors point at it.
public struct CalendarEventError: Error, CustomStringConvertible, Equatable, Sendable {
    public var event: String
    /// The offending part; the whole event when the problem is not local.
    public var part: String
    /// 1-based column of `part` in `event`.
    public var column: Int
    public var message: String
    /// The calendar event to use instead, when there is an obvious one (cron input).
    public var suggestion: String?

    public var description: String {
        var s = "invalid calendar event '\(event)'"
        if part != event.trimmingCharacters(in: .whitespaces) { s += " at '\(part)' (column \(column))" }
        return s + ": " + message
    }

    /// Two lines: the event, and carets under the offending part.
    public var pointer: String {
        "  \(event)\n  " + String(repeating: " ", count: max(0, column - 1)) + String(repeating: "^", count: max(1, part.count))
    }
}

/// The syntax of calendar events; `CalendarEvent` holds the evaluator.
struct CalendarEventParser {
    struct Parsed {
        var utc = false
        var weekdays = CalendarEvent.Weekdays()
        var years: [CalendarEvent.Value] = []
        var months: [CalendarEvent.Value] = []
        var days: [CalendarEvent.Value] = []
        var hours: [CalendarEvent.Value] = []
        var minutes: [CalendarEvent.Value] = []
        var seconds: [CalendarEvent.Value] = [.single(0)]
    }

    /// A piece of the text with its 0-based character offset.
    struct Piece {
        var text: Substring
        var offset: Int
    }

    static let keywords = ["minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually",
                           "quarterly", "semiannually", "semi-annually"]
    static let syntax = "[weekdays] [[Y-]M-D] [H:]M[:S], or a keyword (daily, weekly, …)"

    let text: String

    init(_ text: String) { self.text = text }

    func error(_ part: Piece?, _ message: String, suggestion: String? = nil) -> CalendarEventError {
        let p = part ?? Piece(text: Substring(text.trimmingCharacters(in: .whitespaces)), offset: text.prefix { $0 == " " || $0 == "\t" }.count)
        return CalendarEventError(event: text, part: String(p.text), column: p.offset + 1, message: message, suggestion: suggestion)
    }

    func parse() throws -> Parsed {
        var tokens = Self.split(Piece(text: Substring(text), offset: 0), whereSeparator: { $0 == " " || $0 == "\t" })
            .filter { !$0.text.isEmpty }
        guard !tokens.isEmpty else {
            throw error(nil, "empty; expected \(Self.syntax), e.g. 'sat 02:00'")
        }
        if let cron = CronSyntax.check(text) {
            throw error(nil, cron.message, suggestion: cron.equivalent)
        }
        var result = Parsed()
        if tokens.count > 1, tokens.last!.text == "UTC" {
            result.utc = true
            tokens.removeLast()
        }
        if tokens.count == 1, let k = Self.keyword(String(tokens[0].text)) {
            k(&result)
            return result
        }
        var i = 0
        var hasTime = false
        if let first = tokens.first?.text.first, first.isLetter {
            result.weekdays = try weekdays(tokens[0])
            i += 1
        }
        if i < tokens.count, tokens[i].text.contains("-") {
            let parts = Self.split(tokens[i], whereSeparator: { $0 == "-" })
            guard parts.count == 2 || parts.count == 3 else {
                throw error(tokens[i], "a date is [Y-]M-D, e.g. '2026-12-24', '*-1..7' or '12-24'")
            }
            if parts.count == 3 { result.years = try values(parts[0], .year) }
            result.months = try values(parts[parts.count - 2], .month)
            result.days = try values(parts[parts.count - 1], .day)
            i += 1
        }
        if i < tokens.count, !(tokens[i].text.first?.isLetter ?? false) {
            if tokens[i].text.contains("-") {
                throw error(tokens[i], "a second date; the order is \(Self.syntax)")
            }
            let parts = Self.split(tokens[i], whereSeparator: { $0 == ":" })
            guard parts.count <= 3 else {
                throw error(tokens[i], "a time is [H:]M[:S], e.g. '02:00', '8..17:0/15' or '*/5'")
            }
            switch parts.count {
            case 1:
                result.minutes = try values(parts[0], .minute)
            case 2:
                result.hours = try values(parts[0], .hour)
                result.minutes = try values(parts[1], .minute)
            default:
                result.hours = try values(parts[0], .hour)
                result.minutes = try values(parts[1], .minute)
                result.seconds = try values(parts[2], .second)
            }
            hasTime = true
            i += 1
        }
        if i < tokens.count {
            let t = tokens[i]
            if Self.keyword(String(t.text)) != nil {
                throw error(t, "the keyword '\(t.text)' stands alone and cannot be combined with other parts")
            }
            if t.text.first?.isLetter ?? false, Self.weekdayNumber(t.text) != nil || t.text.contains(",") || t.text.contains("..") {
                throw error(t, "weekdays must come first; the order is \(Self.syntax)")
            }
            if t.text == "UTC" {
                throw error(t, "'UTC' must be the last part")
            }
            throw error(t, "unexpected '\(t.text)'; expected \(Self.syntax)")
        }
        if !hasTime {
            result.hours = [.single(0)]
            result.minutes = [.single(0)]
            result.seconds = [.single(0)]
        }
        return result
    }

    // MARK: - Weekdays

    static func weekdayNumber(_ name: Substring) -> Int? {
        let n = name.lowercased()
        return CalendarEvent.weekdayNames.firstIndex(of: n) ?? CalendarEvent.weekdayLongNames.firstIndex(of: n)
    }

    func weekdays(_ token: Piece) throws -> CalendarEvent.Weekdays {
        var w = CalendarEvent.Weekdays()
        for item in Self.split(token, whereSeparator: { $0 == "," }) {
            guard !item.text.isEmpty else { throw error(token, "empty item in the weekday list") }
            let ends = Self.split(item, separator: "..")
            guard ends.count <= 2 else { throw error(item, "a weekday range is 'mon..fri'") }
            var nums: [Int] = []
            for e in ends {
                guard let n = Self.weekdayNumber(e.text) else {
                    if token.text == item.text, ends.count == 1, Self.keyword(String(e.text)) != nil {
                        throw error(e, "the keyword '\(e.text)' stands alone and cannot be combined with other parts")
                    }
                    if token.text == item.text, ends.count == 1, Self.keyword(e.text.lowercased()) != nil {
                        throw error(e, "keywords are lower case: '\(e.text.lowercased())'")
                    }
                    if ends.count == 1, token.text == item.text, !Self.looksLikeWeekday(e.text) {
                        throw error(e, "unknown keyword or weekday '\(e.text)' (keywords: \(Self.keywords.joined(separator: ", ")); weekdays: mon … sun)")
                    }
                    throw error(e, "'\(e.text)' is not a weekday (mon, tue, wed, thu, fri, sat, sun)")
                }
                nums.append(n)
            }
            if nums.count == 1 {
                w.bits |= 1 << nums[0]
            } else {
                // `fri..mon` wraps around the week's end, as in proxmox-time.
                var d = nums[0]
                while true {
                    w.bits |= 1 << d
                    if d == nums[1] { break }
                    d = (d + 1) % 7
                }
            }
        }
        return w
    }

    static func looksLikeWeekday(_ s: Substring) -> Bool {
        let l = s.lowercased()
        return l.count >= 2 && CalendarEvent.weekdayNames.contains { $0.hasPrefix(l.prefix(2)) }
    }

    // MARK: - Numeric fields

    enum Field {
        case year, month, day, hour, minute, second
        var range: ClosedRange<Int> {
            switch self {
            case .year: return 0...2199
            case .month: return 1...12
            case .day: return 1...31
            case .hour: return 0...23
            case .minute, .second: return 0...59
            }
        }
        var name: String { "\(self)" }
    }

    func values(_ piece: Piece, _ field: Field) throws -> [CalendarEvent.Value] {
        let r = field.range
        if piece.text.isEmpty { throw error(piece, "missing \(field.name)") }
        if piece.text == "*" { return [] }
        if piece.text.hasPrefix("*/") {
            let stepPiece = Piece(text: piece.text.dropFirst(2), offset: piece.offset + 2)
            let step = try number(stepPiece, field, what: "step")
            guard step >= 1 else { throw error(piece, "a step must be at least 1") }
            return [.repeated(start: r.lowerBound, step: step, end: nil)]
        }
        var out: [CalendarEvent.Value] = []
        for item in Self.split(piece, whereSeparator: { $0 == "," }) {
            if item.text.isEmpty { throw error(piece, "empty item in the \(field.name) list") }
            if item.text.hasPrefix("*") {
                throw error(item, "'*' stands alone; it cannot be combined with other \(field.name) values")
            }
            let slash = Self.split(item, whereSeparator: { $0 == "/" })
            guard slash.count <= 2 else { throw error(item, "one '/step' at most") }
            let ends = Self.split(slash[0], separator: "..")
            guard ends.count <= 2 else { throw error(item, "a range is 'a..b'") }
            let a = try number(ends[0], field, what: field.name)
            var b: Int?
            if ends.count == 2 {
                b = try number(ends[1], field, what: field.name)
                if a > b! { throw error(slash[0], "range start \(a) is bigger than end \(b!)") }
            }
            if slash.count == 2 {
                let step = try number(slash[1], field, what: "step")
                guard step >= 1 else { throw error(item, "a step must be at least 1") }
                out.append(.repeated(start: a, step: step, end: b))
            } else if let b {
                out.append(.range(a, b))
            } else {
                out.append(.single(a))
            }
        }
        return out
    }

    func number(_ piece: Piece, _ field: Field, what: String) throws -> Int {
        guard !piece.text.isEmpty else { throw error(piece, "missing \(what)") }
        guard piece.text.allSatisfy({ $0.isASCII && $0.isNumber }), piece.text.count <= 9, let v = Int(piece.text) else {
            if piece.text.contains("-") || piece.text.contains(":") {
                throw error(piece, "misplaced '\(piece.text)'; expected \(Self.syntax)")
            }
            throw error(piece, "'\(piece.text)' is not a number (\(what))")
        }
        if what == "step" {
            guard v <= field.range.upperBound + 1 - field.range.lowerBound || field == .year else {
                throw error(piece, "step \(v) is larger than the \(field.name) range \(field.range.lowerBound)..\(field.range.upperBound)")
            }
            return v
        }
        guard field.range.contains(v) else {
            throw error(piece, "\(field.name) \(v) is out of range \(field.range.lowerBound)..\(field.range.upperBound)")
        }
        return v
    }

    // MARK: - Keywords

    static func keyword(_ word: String) -> ((inout Parsed) -> Void)? {
        func at(months: [Int] = [], day: Int? = nil, weekday: Int? = nil, hour: Int? = 0, minute: Int? = 0) -> (inout Parsed) -> Void {
            { p in
                p.months = months.map { .single($0) }
                p.days = day.map { [.single($0)] } ?? []
                p.weekdays.bits = weekday.map { 1 << $0 } ?? 0
                p.hours = hour.map { [.single($0)] } ?? []
                p.minutes = minute.map { [.single($0)] } ?? []
                p.seconds = [.single(0)]
            }
        }
        switch word {
        case "minutely": return at(hour: nil, minute: nil)
        case "hourly": return at(hour: nil)
        case "daily": return at()
        case "weekly": return at(weekday: 0)
        case "monthly": return at(day: 1)
        case "yearly", "annually": return at(months: [1], day: 1)
        case "quarterly": return at(months: [1, 4, 7, 10], day: 1)
        case "semiannually", "semi-annually": return at(months: [1, 7], day: 1)
        default: return nil
        }
    }

    // MARK: - Splitting with offsets

    static func split(_ p: Piece, whereSeparator isSep: (Character) -> Bool) -> [Piece] {
        var out: [Piece] = []
        var start = p.text.startIndex
        var startOffset = p.offset
        var offset = p.offset
        var i = p.text.startIndex
        while i < p.text.endIndex {
            if isSep(p.text[i]) {
                out.append(Piece(text: p.text[start..<i], offset: startOffset))
                start = p.text.index(after: i)
                startOffset = offset + 1
            }
            offset += 1
            i = p.text.index(after: i)
        }
        out.append(Piece(text: p.text[start...], offset: startOffset))
        return out
    }

    static func split(_ p: Piece, separator: String) -> [Piece] {
        var out: [Piece] = []
        var rest = p
        while let r = rest.text.range(of: separator) {
            let head = rest.text[..<r.lowerBound]
            out.append(Piece(text: head, offset: rest.offset))
            let consumed = head.count + separator.count
            rest = Piece(text: rest.text[r.upperBound...], offset: rest.offset + consumed)
        }
        out.append(rest)
        return out
    }
}

/// Recognises cron lines (`0 2 * * *`, `@daily`) and, where the meaning is
/// plain, the calendar event that says the same.
enum CronSyntax {
    struct Finding {
        var message: String
        var equivalent: String?
    }

    static func check(_ text: String) -> Finding? {
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        if fields.count == 1, let f = fields.first, f.hasPrefix("@") {
            let map = ["@yearly": "yearly", "@annually": "yearly", "@monthly": "monthly", "@weekly": "sun 00:00",
                       "@daily": "daily", "@midnight": "daily", "@hourly": "hourly"]
            return finding(map[f.lowercased()])
        }
        guard fields.count == 5 || fields.count == 6 else { return nil }
        let cronChars = Set("0123456789*,/-?LW#abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        guard fields.allSatisfy({ $0.allSatisfy { cronChars.contains($0) } }),
              fields.prefix(2).allSatisfy({ $0.contains { $0.isNumber || $0 == "*" } }) else { return nil }
        guard fields.count == 5 else { return finding(nil) }
        return finding(equivalent(minute: fields[0], hour: fields[1], dom: fields[2], month: fields[3], dow: fields[4]))
    }

    static func finding(_ equivalent: String?) -> Finding {
        if let e = equivalent, CalendarEvent.isValid(e) {
            return Finding(message: "this is cron syntax, which calendar events do not use; write '\(e)'", equivalent: e)
        }
        return Finding(message: "this is cron syntax, which calendar events do not use; write \(CalendarEventParser.syntax), e.g. 'mon..fri 02:00'",
                       equivalent: nil)
    }

    static func equivalent(minute: String, hour: String, dom: String, month: String, dow: String) -> String? {
        let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        guard let mi = list(minute), let h = list(hour), let d = list(dom),
              let mo = list(month, names: Dictionary(uniqueKeysWithValues: monthNames.enumerated().map { ($1, $0 + 1) })),
              let w = weekdays(dow) else { return nil }
        // cron fires when day-of-month OR weekday matches if both are set: no equivalent.
        if d != "*" && w != "*" { return nil }
        var parts: [String] = []
        if w != "*" { parts.append(w) }
        if d != "*" || mo != "*" { parts.append("*-\(mo)-\(d)") }
        if h == "*" {
            parts.append(Int(mi) != nil ? "*:\(pad(mi))" : mi)
        } else {
            parts.append("\(pad(h)):\(pad(mi))")
        }
        return parts.joined(separator: " ")
    }

    static func pad(_ s: String) -> String { Int(s) != nil && s.count == 1 ? "0" + s : s }

    /// A cron field as a calendar-event field: `a-b` → `a..b`, steps and lists kept.
    static func list(_ field: String, names: [String: Int] = [:]) -> String? {
        if field == "*" || field == "?" { return "*" }
        var items: [String] = []
        for item in field.split(separator: ",", omittingEmptySubsequences: false) {
            let slash = item.split(separator: "/", omittingEmptySubsequences: false)
            guard slash.count <= 2 else { return nil }
            var base: String
            if slash[0] == "*" {
                guard slash.count == 2, field.split(separator: ",").count == 1 else { return nil }
                base = "*"
            } else {
                let ends = slash[0].split(separator: "-", omittingEmptySubsequences: false)
                guard ends.count <= 2 else { return nil }
                let nums = ends.map { e -> Int? in Int(e) ?? names[e.lowercased()] }
                guard !nums.contains(where: { $0 == nil }) else { return nil }
                base = nums.map { String($0!) }.joined(separator: "..")
            }
            if slash.count == 2 {
                guard let step = Int(slash[1]) else { return nil }
                base += "/\(step)"
            }
            items.append(base)
        }
        return items.joined(separator: ",")
    }

    /// Cron's day-of-week (0/7 = Sunday, names) as weekday names; no steps.
    static func weekdays(_ field: String) -> String? {
        if field == "*" || field == "?" { return "*" }
        let cronNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
        func name(_ s: Substring) -> String? {
            if let n = Int(s), (0...7).contains(n) { return cronNames[n % 7] }
            let l = s.lowercased()
            return cronNames.contains(l) ? l : nil
        }
        var items: [String] = []
        for item in field.split(separator: ",", omittingEmptySubsequences: false) {
            let ends = item.split(separator: "-", omittingEmptySubsequences: false)
            guard ends.count <= 2 else { return nil }
            let names = ends.map(name)
            guard !names.contains(where: { $0 == nil }) else { return nil }
            items.append(names.map { $0! }.joined(separator: ".."))
        }
        return items.joined(separator: ",")
    }
}
