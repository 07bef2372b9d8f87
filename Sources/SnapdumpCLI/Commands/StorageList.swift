import ArgumentParser

struct StorageList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List configured storages.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        let cfg = try global.storages().config
        let records = cfg.storages.map { s in
            var r = OutputRecord()
            r.add("storage", "Name", .string(s.id))
            r.add("type", "Type", .string(s.type.rawValue))
            r.add("path", "Path/Pool", .of(s.path ?? s.pool), text: s.path ?? s.pool ?? "")
            r.add("content", "Content", .list(s.content.map(\.rawValue).sorted().map(OutputValue.string)))
            r.add("reflink", "Reflink", .bool(s.reflink))
            r.add("enabled", "State", .bool(!s.disabled), text: s.disabled ? "disabled" : "enabled")
            return r
        }
        Output.list(records, output.format, columns: ["Name", "Type", "Path/Pool", "Content", "Reflink", "State"])
    }
}
