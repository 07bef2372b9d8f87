import ArgumentParser
import Storage

struct VolumePath: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "path", abstract: "Print the path QEMU opens for a volume.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id, storeid:volname.") var volid: String

    func run() throws {
        let vol = try VolumeID(parsing: volid)
        print(try global.storages().path(of: vol).path)
    }
}
