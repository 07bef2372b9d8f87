import ArgumentParser
import Repository

/// `snapdump repo export <storeid:backup/vm/N/TIME> --vma FILE`: a snapshot as a zstd VMA archive.
struct RepoExport: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Export a repository snapshot as a VMA archive (zstd).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Snapshot: <storeid>:backup/vm/<vmid>/<UTC time>.") var snapshot: String
    @Option(help: "Archive file to write (.vma.zst); must not exist.") var vma: String

    func run() throws {
        guard let v = RepositoryVolume(parsing: snapshot) else {
            throw ValidationError("invalid snapshot '\(snapshot)': expected <storeid>:backup/vm/<vmid>/<YYYY-MM-DDTHH:MM:SSZ>")
        }
        let out = absolutePath(vma)
        guard !FileSystem.exists(out) else { throw ValidationError("'\(out)' exists already") }
        let repo = try RepositoryAccess.open(v.storage, global)
        try VMAConversion.exportArchive(v.snapshot, from: repo, to: out)
        print(out)
    }
}

import SnapdumpSystem
