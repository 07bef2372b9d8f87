import ArgumentParser
import Backup

/// `snapdump backup unprotect <archive>`: removes `<archive>.protected`.
struct BackupUnprotect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unprotect", abstract: "Remove the protection of a backup archive.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst, repo1:backup/vm/100/<time>) or path.") var archive: String

    func run() throws {
        if let backup = try BackupLocation.repositoryBackup(archive, global: global) {
            let (store, s) = backup
            try store.repository.setProtected(s, false)
            print("unprotected '\(store.volume(s))'")
            return
        }
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        try dump.setProtected(a, false)
        print("unprotected '\(dump.label(a))'")
    }
}
