import ArgumentParser
import Backup

/// `snapdump backup notes <archive> [--set TEXT]`: prints or sets `<archive>.notes`.
struct BackupNotes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notes", abstract: "Print the notes of a backup archive, or set them with --set (\"\" removes them).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst) or path.") var archive: String
    @Option(help: "New notes (UTF-8); an empty string removes them.") var set: String?

    func run() throws {
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        if let text = set {
            try dump.setNotes(a, text)
        } else if let notes = a.notes {
            print(notes, terminator: notes.hasSuffix("\n") ? "" : "\n")
        }
    }
}
