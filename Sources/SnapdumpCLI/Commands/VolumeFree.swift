import ArgumentParser
import Storage

struct VolumeFree: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "free",
                                                    abstract: "Delete a volume (refused while it has snapshots other than backup bases).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id, storeid:volname.") var volid: String

    func run() throws {
        let vol = try VolumeID(parsing: volid)
        // Base snapshots of incremental repository backups go with the volume; other snapshots refuse.
        try BaseSnapshot.free(vol, on: try global.storages().plugin(for: vol))
    }
}
