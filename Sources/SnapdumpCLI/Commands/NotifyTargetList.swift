import ArgumentParser
import Notify

struct NotifyTargetList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List notification targets.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        let cfg = try global.notifications()
        let records = cfg.targets.map { t in
            var r = OutputRecord()
            r.add("name", "Name", .string(t.name))
            r.add("type", "Type", .string(t.type))
            r.add("disable", "State", .bool(t.disabled), text: t.disabled ? "disabled" : "enabled")
            r.add("destination", "Destination", .string(t.summary))
            r.add("comment", nil, .of(t.comment))
            return r
        }
        Output.list(records, output.format, columns: ["Name", "Type", "State", "Destination"])
    }
}
