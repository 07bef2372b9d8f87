import ArgumentParser
import Storage

struct VolumeList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the volumes of a storage.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id.") var storeid: String
    @Option(help: "Only volumes of this VMID.") var vmid: Int?
    @OptionGroup var output: OutputOptions

    func run() throws {
        let vols = try global.storages().plugin(storeid).list(vmid: vmid)
        let records = vols.map { v in
            var r = OutputRecord()
            r.add("volid", "Volid", .string(v.volume.description))
            r.add("format", "Format", .string(v.format.rawValue))
            r.add("size", "Size", .of(v.size))
            r.add("vmid", "VMID", .of(v.vmid))
            return r
        }
        Output.list(records, output.format, columns: ["Volid", "Format", "Size", "VMID"])
    }
}
