import ArgumentParser
import Backup
import Foundation
import Storage

struct SnapshotList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List snapshots, like zfs list -t snapshot.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Only this storage.") var storeid: String?
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let reg = try global.storages()
        let ids = try storeid.map { [try reg.config.storage($0).id] } ?? reg.config.storages.map(\.id)
        var records: [OutputRecord] = []
        func add(_ volume: VolumeID, _ name: String, _ created: Date, _ used: UInt64?) {
            var r = OutputRecord()
            r.add("volid", "Volume", .string("\(volume)"))
            r.add("snapshot", "Snapshot", .string(name))
            r.add("ctime", "Created", .of(created), text: BackupLocation.time(created))
            r.add("used", "Used", .of(used))
            // Kept by an incremental repository backup as the next one's base (removed by the backups, not by hand).
            r.add("base", "Base", .bool(BaseSnapshot.isBase(name)), text: BaseSnapshot.isBase(name) ? "base" : "-")
            records.append(r)
        }
        for id in ids {
            for s in try reg.plugin(id).listSnapshots() { add(s.volume, s.name, s.created, s.used) }
        }
        // Bases kept as dirty bitmaps (qcow2 images, fleeced raw disks): Used is the bytes written since.
        let (bitmaps, warnings) = await BitmapBases.list(storageIDs: Set(ids), storages: reg, paths: global.paths)
        for w in warnings { printError("WARN: \(w)") }
        for b in bitmaps { add(b.volume, b.name, b.created, b.dirtyBytes) }
        Output.list(records, output.format, columns: ["Volume", "Snapshot", "Created", "Used", "Base"])
    }
}
