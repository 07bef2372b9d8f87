import ArgumentParser
import Backup

/// `snapdump backup protect <archive>`: creates `<archive>.protected`.
struct BackupProtect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protect", abstract: "Protect a backup archive from removal and prune.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst, repo1:backup/vm/100/<time>) or path.") var archive: String

    func run() throws {
        if let backup = try BackupLocation.repositoryBackup(archive, global: global) {
            let (store, s) = backup
            try store.repository.setProtected(s, true)
            print("protected '\(store.volume(s))'")
            return
        }
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        try dump.setProtected(a, true)
        print("protected '\(dump.label(a))'")
    }
}
