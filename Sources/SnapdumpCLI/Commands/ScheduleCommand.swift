import ArgumentParser
import Foundation
import SnapdumpConfig
import SnapdumpSystem

/// `snapdump schedule …`: calendar events (Proxmox's schedule-analyze).
struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Check calendar events (the 'schedule' of backup jobs).",
        subcommands: [ScheduleAnalyze.self]
    )
}

/// An error whose text is printed as is (first line: the error; then details).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }

    /// A calendar event error with the caret line under the offending part.
    init(_ e: CalendarEventError) {
        description = "\(e)\n\(e.pointer)"
    }
}

struct ScheduleAnalyze: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "analyze",
        abstract: "Print the next times a calendar event fires (local time).",
        discussion: """
            Calendar events: [weekdays] [[Y-]M-D] [H:]M[:S], with lists (a,b), ranges (a..b), \
            steps (x/step, */step) and '*'; a bare number is minutes ('*/5' = every 5 minutes). \
            Keywords: minutely, hourly, daily, weekly, monthly, yearly, annually, quarterly, semiannually. \
            Examples: 'sat 02:00', 'mon..fri 8..17,22:0/15', 'Sat *-1..7 15:00', '*-12-24 18:00'.
            """
    )

    @Argument(help: "The calendar event, e.g. 'mon..fri 02:00'.") var event: String
    @Option(help: "Start after this local time: \"YYYY-MM-DD HH:MM[:SS]\" or seconds since the epoch (default now).")
    var starttime: String?
    @Option(help: "How many times to print (1-10000).") var iterations: Int = 10
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard (1...10000).contains(iterations) else { throw ValidationError("--iterations must be between 1 and 10000") }
    }

    func run() throws {
        let ev: CalendarEvent
        do { ev = try CalendarEvent(event) } catch let e as CalendarEventError { throw CLIError(e) }
        let zone = TimeZone.current
        let start = try Self.parseStart(starttime, zone: zone)
        let times = ev.upcoming(after: start, count: iterations, in: zone)
        if output.format == .text {
            for t in times { print(CivilTime(t, .foundation(zone)).spaced) }
        } else {
            // As `systemd-analyze calendar`/pvesh: the local time and the epoch of each firing.
            Output.list(times.map { t in
                var r = OutputRecord()
                r.add("time", nil, .string(CivilTime(t, .foundation(zone)).spaced))
                r.add("timestamp", nil, .of(t))
                return r
            }, output.format)
        }
        if times.count < iterations {
            FileHandle.standardError.write(Data("note: '\(event)' fires \(times.isEmpty ? "never" : "only \(times.count) more time(s)") after \(CivilTime(start, .foundation(zone)).spaced)\n".utf8))
        }
    }

    static func parseStart(_ text: String?, zone: TimeZone) throws -> Date {
        guard let text else { return Date() }
        let years = "\(CivilTime.supportedYears.lowerBound)-\(CivilTime.supportedYears.upperBound)"
        if let epoch = Int64(text) {
            guard CivilTime.supportedSeconds.contains(Double(epoch)) else {
                throw CLIError("invalid --starttime '\(text)': seconds since the epoch must lie in the years \(years)")
            }
            return Date(timeIntervalSince1970: TimeInterval(epoch))
        }
        guard let c = CivilTime(lenient: text) else {
            throw CLIError("invalid --starttime '\(text)': expected \"YYYY-MM-DD HH:MM[:SS]\" (local time, years \(years)) or seconds since the epoch")
        }
        // Events strictly after the start; a start at a whole second counts from that second.
        return Date(timeIntervalSince1970: TimeInterval(c.seconds(in: .foundation(zone))))
    }
}
