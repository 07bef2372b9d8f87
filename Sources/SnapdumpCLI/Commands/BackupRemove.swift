import ArgumentParser
import Backup

/// `snapdump backup remove <archive>`: deletes an archive with its .log and .notes; refused while protected.
struct BackupRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove a backup archive with its .log and .notes (refused while protected).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id (local:backup/vzdump-qemu-100-….vma.zst, repo1:backup/vm/100/<time>) or path.") var archive: String

    func run() async throws {
        if let backup = try BackupLocation.repositoryBackup(archive, global: global) {
            let (store, s) = backup
            // Its chunks stay until `repo gc` finds them unreferenced.
            try store.repository.remove(s)
            print("removed '\(store.volume(s))'")
            // The guest's newest backup gone: the base it recorded goes too (the next backup reads everything anyway).
            if let vmid = s.vmid {
                let (removed, skipped) = await UnrecordedBases.removeAfterRemoval(vmids: [vmid], paths: global.paths, storages: try global.storages())
                for r in removed { printError("removed \(r): no backup records it any more") }
                for w in skipped { printError("WARN: \(w)") }
            }
            return
        }
        let (dump, a) = try BackupLocation.archive(archive, global: global)
        for w in try dump.remove(a) { printError("WARN: \(w)") }
        print("removed '\(dump.label(a))'")
    }
}
