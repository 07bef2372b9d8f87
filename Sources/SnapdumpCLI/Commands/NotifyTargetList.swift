import ArgumentParser
import Notify

struct NotifyTargetList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List notification targets.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let cfg = try global.notifications()
        let rows = cfg.targets.map { [$0.name, $0.type, $0.disabled ? "disabled" : "enabled", $0.summary] }
        print(Table.render(["Name", "Type", "State", "Destination"], rows))
    }
}
