import ArgumentParser
import Notify
import SnapdumpConfig

struct NotifyMatcherAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a matcher that routes notifications to targets.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Matcher name.") var name: String
    @Option(help: "Target to notify; repeat for several.") var target: [String] = []
    @Option(help: "all (every rule must match, default) or any.") var mode: String?
    @Option(name: .customLong("match-severity"), help: "Severities, e.g. warning,error (info, notice, warning, error, unknown).") var matchSeverity: String?
    @Option(name: .customLong("match-field"), help: "exact:<field>=<value>[,<value>] or regex:<field>=<pattern>; fields: type, hostname, job-id, vmid. Repeat for several.") var matchField: [String] = []
    @Option(name: .customLong("invert-match"), help: "1 to invert the match.") var invertMatch: String?
    @Option(help: "Comment.") var comment: String?

    func run() throws {
        guard SectionConfig.isValidID(name) else { throw NotifyError("invalid matcher name '\(name)'") }
        guard !target.isEmpty else { throw NotifyError("matcher '\(name)' needs at least one --target") }
        var s = SectionConfig.Section(type: "matcher", id: name)
        func add(_ key: String, _ value: String?) { if let value { s.properties.append((key, value)) } }
        add("mode", mode); add("match-severity", matchSeverity)
        for f in matchField { add("match-field", f) }
        add("invert-match", invertMatch)
        for t in target { add("target", t) }
        add("comment", comment)
        let matcher = try NotifySection.check("matcher '\(name)'") { try NotificationConfig.matcher(s) }
        var cfg = try global.notifications()
        guard !cfg.matchers.contains(where: { $0.name == name }), cfg.target(named: name) == nil else {
            throw NotifyError("matcher '\(name)' already exists")
        }
        for t in target where cfg.target(named: t) == nil {
            throw NotifyError("matcher '\(name)': unknown target '\(t)'")
        }
        cfg.matchers.append(matcher)
        try cfg.save()
    }
}
