import ArgumentParser
import Foundation
import Storage

struct SnapshotList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List snapshots, like zfs list -t snapshot.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Only this storage.") var storeid: String?
    @OptionGroup var output: OutputOptions

    func run() throws {
        let reg = try global.storages()
        let ids = try storeid.map { [try reg.config.storage($0).id] } ?? reg.config.storages.map(\.id)
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        var records: [OutputRecord] = []
        for id in ids {
            for s in try reg.plugin(id).listSnapshots() {
                var r = OutputRecord()
                r.add("volid", "Volume", .string("\(s.volume)"))
                r.add("snapshot", "Snapshot", .string(s.name))
                r.add("ctime", "Created", .of(s.created), text: f.string(from: s.created))
                r.add("used", "Used", .of(s.used))
                // Kept by an incremental repository backup as the next one's base (removed by the backups, not by hand).
                r.add("base", "Base", .bool(BaseSnapshot.isBase(s.name)), text: BaseSnapshot.isBase(s.name) ? "base" : "-")
                records.append(r)
            }
        }
        Output.list(records, output.format, columns: ["Volume", "Snapshot", "Created", "Used", "Base"])
    }
}
