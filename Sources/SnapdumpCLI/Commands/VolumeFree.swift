import ArgumentParser
import Storage

struct VolumeFree: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "free", abstract: "Delete a volume (refused while it has snapshots).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id, storeid:volname.") var volid: String

    func run() throws {
        let vol = try VolumeID(parsing: volid)
        try global.storages().plugin(for: vol).free(vol)
    }
}
