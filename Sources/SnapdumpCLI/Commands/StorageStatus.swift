import ArgumentParser
import Backup
import SnapdumpSystem
import Storage

struct StorageStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show storage status: active, space, snapshot capability (pvesm status).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Only this storage.") var storeid: String?
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let reg = try global.storages()
        let defs = try storeid.map { [try reg.config.storage($0)] } ?? reg.config.storages
        // Bases kept as dirty bitmaps count like base snapshots; they hold no space of the storage.
        let (bitmaps, warnings) = await BitmapBases.list(storageIDs: Set(defs.map(\.id)), storages: reg, paths: global.paths)
        for w in warnings { printError("WARN: \(w)") }
        var records: [OutputRecord] = []
        for d in defs {
            let st = try StorageRegistry.plugin(for: d).status()
            var r = OutputRecord()
            r.add("storage", "Name", .string(d.id))
            r.add("type", "Type", .string(d.type.rawValue))
            r.add("active", "Status", .bool(st.active), text: st.active ? "active" : "inactive")
            r.add("total", "Total", .of(st.total))
            r.add("used", "Used", .of(st.used))
            r.add("avail", "Available", .of(st.available))
            let fraction = st.total > 0 ? Double(st.used) / Double(st.total) : nil
            r.add("used_fraction", "%", fraction.map(OutputValue.double) ?? .null,
                  text: fraction.map { String(format: "%.2f%%", $0 * 100) } ?? "-")
            r.add("snapshots", "Snapshots", .string(st.snapshots))
            // The snapshots incremental repository backups keep as the next one's base: number, and
            // the space only they hold where the storage can tell (null otherwise, or when it cannot list them).
            let bases = st.active ? try? StorageRegistry.plugin(for: d).listSnapshots().filter { BaseSnapshot.isBase($0.name) } : nil
            let used: UInt64? = bases.flatMap { b in b.allSatisfy { $0.used != nil } ? b.reduce(0) { $0 + $1.used! } : nil }
            let count = bases.map { $0.count + bitmaps.filter { $0.volume.storage == d.id }.count }
            r.add("base_snapshots", "Bases", .of(count),
                  text: count.map { "\($0)" + (used.map { " (\(ByteCount.format($0)))" } ?? "") } ?? "-")
            r.add("base_bytes", nil, .of(used))
            records.append(r)
        }
        Output.list(records, output.format, columns: ["Name", "Type", "Status", "Total", "Used", "Available", "%", "Snapshots", "Bases"])
    }
}

import Foundation
