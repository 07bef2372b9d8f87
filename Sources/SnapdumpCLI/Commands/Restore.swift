import ArgumentParser
import Backup
import Repository

/// `snapdump restore`: qmrestore.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Restore a VMA archive or a repository backup into a VM (qmrestore).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Archive file (.vma, .vma.zst, .vma.gz), or a repository backup (repo1:backup/vm/100/2026-11-30T02:00:00Z).")
    var archive: String
    @Argument(help: "Target VMID.") var vmid: Int
    @Option(help: "Put all disks on this storage.") var storage: String?
    @Flag(help: "Replace an existing VM.") var force = false
    @Flag(help: "Start the VM after restoring.") var start = false
    @Flag(help: "Assign new unique MAC addresses.") var unique = false
    @Option(help: "Limit I/O bandwidth (KiB/s; 0 = unlimited).") var bwlimit: Int = 0

    func validate() throws {
        guard (0...(1 << 40)).contains(bwlimit) else { throw ValidationError("invalid --bwlimit \(bwlimit): 0 to \(1 << 40) KiB/s") }
    }

    func run() async throws {
        // `repo1:backup/vm/100/<time>` names a repository backup; anything else is an archive file.
        let volume = archive.hasPrefix("/") || archive.hasPrefix(".") ? nil : RepositoryVolume(parsing: archive)
        var o = if let volume { Restore.Options(repositoryBackup: volume, vmid: vmid) } else { Restore.Options(archive: try archivePath(archive), vmid: vmid) }
        o.storage = storage
        o.force = force
        o.start = start
        o.unique = unique
        o.bwlimit = bwlimit
        _ = try await Restore(options: o, paths: global.paths, log: TaskLog()).run()
    }
}
