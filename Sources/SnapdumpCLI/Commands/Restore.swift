import ArgumentParser
import Backup

/// `snapdump restore`: qmrestore.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Restore a VMA archive into a VM (qmrestore).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Archive file (.vma, .vma.zst, .vma.gz).") var archive: String
    @Argument(help: "Target VMID.") var vmid: Int
    @Option(help: "Put all disks on this storage.") var storage: String?
    @Flag(help: "Replace an existing VM.") var force = false
    @Flag(help: "Start the VM after restoring.") var start = false
    @Flag(help: "Assign new unique MAC addresses.") var unique = false

    func run() async throws {
        var o = Restore.Options(archive: archive.hasPrefix("/") ? archive : FileManagerCWD.absolute(archive), vmid: vmid)
        o.storage = storage
        o.force = force
        o.start = start
        o.unique = unique
        _ = try await Restore(options: o, paths: global.paths, log: TaskLog()).run()
    }
}
