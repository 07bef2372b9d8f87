import ArgumentParser
import Notify

struct NotifyMatcherList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List matchers.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let cfg = try global.notifications()
        let rows = cfg.matchers.map { m -> [String] in
            var rules = m.severities.isEmpty ? [] : ["severity=\(m.severities.map(\.rawValue).joined(separator: ","))"]
            rules += m.fields.map(\.description)
            return [m.name, m.mode.rawValue, m.invert ? "1" : "0", m.disabled ? "disabled" : "enabled",
                    m.targets.joined(separator: ","), rules.isEmpty ? "(everything)" : rules.joined(separator: " ")]
        }
        print(Table.render(["Name", "Mode", "Invert", "State", "Targets", "Rules"], rows))
    }
}
