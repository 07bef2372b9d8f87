import ArgumentParser
import Storage

struct VolumeAlloc: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "alloc", abstract: "Allocate a new volume; prints its volume id.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id.") var storeid: String
    @Argument(help: "Owner VMID.") var vmid: Int
    @Argument(help: "Size in KiB, or with suffix K, M, G, T.") var size: String
    @Option(help: "raw or qcow2.") var format: String?

    func run() throws {
        let bytes: UInt64
        do {
            bytes = try SizeArgument.parse(size)
        } catch let e as ValidationError {
            // From run(), a ValidationError would print the root command's usage too: one line only.
            throw StorageError(.invalidArgument, e.message)
        }
        var fmt: VolumeFormat?
        if let format {
            guard let f = VolumeFormat(rawValue: format) else { throw StorageError(.invalidArgument, "unknown format '\(format)' (raw, qcow2)") }
            fmt = f
        }
        let vol = try global.storages().plugin(storeid).allocate(vmid: vmid, size: bytes, format: fmt)
        print(vol)
    }
}
