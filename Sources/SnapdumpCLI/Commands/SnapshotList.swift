import ArgumentParser
import Foundation
import Storage

struct SnapshotList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List snapshots, like zfs list -t snapshot.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Only this storage.") var storeid: String?

    func run() throws {
        let reg = try global.storages()
        let ids = try storeid.map { [try reg.config.storage($0).id] } ?? reg.config.storages.map(\.id)
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        var rows: [[String]] = []
        for id in ids {
            for s in try reg.plugin(id).listSnapshots() {
                rows.append(["\(s.volume)", s.name, f.string(from: s.created), s.used.map { "\($0)" } ?? "-"])
            }
        }
        print(Table.render(["Volume", "Snapshot", "Created", "Used"], rows))
    }
}
