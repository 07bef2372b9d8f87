import ArgumentParser
import Storage

struct SnapshotCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Snapshot volumes of one storage (atomically where the storage can).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume ids, all on one storage.") var volids: [String]
    @Option(help: "Snapshot name.") var name: String

    func validate() throws {
        if volids.isEmpty { throw ValidationError("name at least one volume") }
    }

    func run() throws {
        let vols = try volids.map(VolumeID.init(parsing:))
        try NameRules.validateSnapshotName(name)
        let stores = Set(vols.map(\.storage))
        guard stores.count == 1 else {
            throw StorageError(.invalidArgument, "volumes of one storage only, got \(stores.sorted().joined(separator: ", ")): a snapshot across storages cannot be atomic")
        }
        try global.storages().plugin(vols[0].storage).createSnapshot(vols, name: name)
    }
}
