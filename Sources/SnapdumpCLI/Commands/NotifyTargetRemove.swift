import ArgumentParser
import Notify

struct NotifyTargetRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a notification target no matcher uses.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Target name.") var name: String

    func run() throws {
        var cfg = try global.notifications()
        guard cfg.target(named: name) != nil else { throw NotifyError("no notification target '\(name)'") }
        if let m = cfg.matchers.first(where: { $0.targets.contains(name) }) {
            throw NotifyError("notification target '\(name)' is used by matcher '\(m.name)': remove it there first")
        }
        cfg.targets.removeAll { $0.name == name }
        try cfg.save()
    }
}
