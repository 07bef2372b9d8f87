import ArgumentParser
import Notify

struct NotifyMatcherRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a matcher.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Matcher name.") var name: String

    func run() throws {
        var cfg = try global.notifications()
        guard cfg.matchers.contains(where: { $0.name == name }) else { throw NotifyError("no matcher '\(name)'") }
        cfg.matchers.removeAll { $0.name == name }
        try cfg.save()
    }
}
