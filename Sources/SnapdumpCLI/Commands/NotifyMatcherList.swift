import ArgumentParser
import Notify

struct NotifyMatcherList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List matchers.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        let cfg = try global.notifications()
        let records = cfg.matchers.map { m -> OutputRecord in
            var rules = m.severities.isEmpty ? [] : ["severity=\(m.severities.map(\.rawValue).joined(separator: ","))"]
            rules += m.fields.map(\.description)
            var r = OutputRecord()
            r.add("name", "Name", .string(m.name))
            r.add("mode", "Mode", .string(m.mode.rawValue))
            r.add("invert-match", "Invert", .bool(m.invert))
            r.add("disable", "State", .bool(m.disabled), text: m.disabled ? "disabled" : "enabled")
            r.add("target", "Targets", .list(m.targets.map(OutputValue.string)))
            r.add("match-severity", nil, .list(m.severities.map { .string($0.rawValue) }))
            r.add("match-field", "Rules", .list(m.fields.map { .string($0.description) }),
                  text: rules.isEmpty ? "(everything)" : rules.joined(separator: " "))
            return r
        }
        Output.list(records, output.format, columns: ["Name", "Mode", "Invert", "State", "Targets", "Rules"])
    }
}
