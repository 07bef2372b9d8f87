import ArgumentParser
import Backup

/// `snapdump backup notes <archive> [--set TEXT]`: prints or sets `<archive>.notes`.
struct BackupNotes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notes", abstract: "Print the notes of a backup archive, or set them with --set (\"\" removes them).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst, repo1:backup/vm/100/<time>) or path.") var archive: String
    @Option(help: "New notes (UTF-8); an empty string removes them.") var set: String?

    func run() throws {
        if let backup = try BackupLocation.repositoryBackup(archive, global: global) {
            let (store, s) = backup
            // Notes live in the manifest's unprotected part, as in PBS.
            if let text = set {
                try store.repository.setNotes(s, text)
            } else if let notes = try store.repository.notes(s) {
                print(notes, terminator: notes.hasSuffix("\n") ? "" : "\n")
            }
            return
        }
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        if let text = set {
            try dump.setNotes(a, text)
        } else if let notes = a.notes {
            print(notes, terminator: notes.hasSuffix("\n") ? "" : "\n")
        }
    }
}
