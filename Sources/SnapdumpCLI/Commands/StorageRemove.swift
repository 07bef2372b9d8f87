import ArgumentParser

struct StorageRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a storage from storage.cfg (its data stays).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id.") var storeid: String

    func run() throws {
        var cfg = try global.storages().config
        try cfg.remove(storeid)
        try cfg.save()
    }
}
