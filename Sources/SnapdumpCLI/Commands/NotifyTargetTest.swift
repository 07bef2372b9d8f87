import ArgumentParser
import Notify

struct NotifyTargetTest: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "test", abstract: "Send a test notification to one target.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Target name.") var name: String

    func run() throws {
        let cfg = try global.notifications()
        guard let target = cfg.target(named: name) else { throw NotifyError("no notification target '\(name)'") }
        let n = NotificationEvent(severity: .info, title: "Test notification",
                             message: "This is a test of the notification target '\(name)'.", fields: ["type": ["system"]])
        try target.send(n, hostname: Notifier.hostname)
        print("sent a test notification to '\(name)'")
    }
}
