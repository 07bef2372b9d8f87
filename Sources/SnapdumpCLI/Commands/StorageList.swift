import ArgumentParser

struct StorageList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List configured storages.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let cfg = try global.storages().config
        let rows = cfg.storages.map { s in
            [s.id, s.type.rawValue, s.path ?? s.pool ?? "", s.content.map(\.rawValue).sorted().joined(separator: ","),
             s.reflink ? "1" : "0", s.disabled ? "disabled" : "enabled"]
        }
        print(Table.render(["Name", "Type", "Path/Pool", "Content", "Reflink", "State"], rows))
    }
}
