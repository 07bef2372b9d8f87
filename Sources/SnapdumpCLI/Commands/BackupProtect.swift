import ArgumentParser
import Backup

/// `snapdump backup protect <archive>`: creates `<archive>.protected`.
struct BackupProtect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protect", abstract: "Protect a backup archive from removal and prune.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst) or path.") var archive: String

    func run() throws {
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        try dump.setProtected(a, true)
        print("protected '\(dump.label(a))'")
    }
}
