import ArgumentParser
import Storage

struct SnapshotDelete: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a snapshot of volumes.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume ids.") var volids: [String]
    @Option(help: "Snapshot name.") var name: String

    func run() throws {
        let vols = try volids.map(VolumeID.init(parsing:))
        try NameRules.validateSnapshotName(name)
        let reg = try global.storages()
        for store in Set(vols.map(\.storage)).sorted() {
            try reg.plugin(store).deleteSnapshot(vols.filter { $0.storage == store }, name: name)
        }
    }
}
