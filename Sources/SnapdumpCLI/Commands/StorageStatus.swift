import ArgumentParser
import Storage

struct StorageStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show storage status: active, space, snapshot capability (pvesm status).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Only this storage.") var storeid: String?

    func run() throws {
        let reg = try global.storages()
        let defs = try storeid.map { [try reg.config.storage($0)] } ?? reg.config.storages
        var rows: [[String]] = []
        for d in defs {
            let st = try StorageRegistry.plugin(for: d).status()
            rows.append([d.id, d.type.rawValue, st.active ? "active" : "inactive", "\(st.total)", "\(st.used)", "\(st.available)",
                         st.total > 0 ? String(format: "%.2f%%", Double(st.used) * 100 / Double(st.total)) : "-", st.snapshots])
        }
        print(Table.render(["Name", "Type", "Status", "Total", "Used", "Available", "%", "Snapshots"], rows))
    }
}

import Foundation
