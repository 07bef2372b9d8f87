import ArgumentParser
import Storage

struct VolumeList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the volumes of a storage.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id.") var storeid: String
    @Option(help: "Only volumes of this VMID.") var vmid: Int?

    func run() throws {
        let vols = try global.storages().plugin(storeid).list(vmid: vmid)
        print(Table.render(["Volid", "Format", "Size", "VMID"], vols.map { [$0.volume.description, $0.format.rawValue, "\($0.size)", "\($0.vmid)"] }))
    }
}
