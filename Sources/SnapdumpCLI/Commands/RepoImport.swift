import ArgumentParser
import Archive
import Repository

/// `snapdump repo import <storeid> <archive>`: a VMA archive becomes a repository snapshot.
struct RepoImport: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "import", abstract: "Import a VMA archive (.vma, .vma.zst, .vma.gz) as a repository snapshot.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id (type repo).") var storeid: String
    @Argument(help: "Archive file.") var archive: String
    @Option(help: "Guest id (default: from the archive name vzdump-qemu-<vmid>-…).") var vmid: Int?

    func run() throws {
        let path = absolutePath(archive)
        let name = (path as NSString).lastPathComponent
        guard let id = vmid.map(String.init) ?? ArchiveName(fileName: name).map({ String($0.vmid) }) else {
            throw ValidationError("cannot tell the guest from '\(name)': name it with --vmid")
        }
        let repo = try RepositoryAccess.open(storeid, global)
        let s = try VMAConversion.importArchive(path, into: repo, vmid: id) { print($0) }
        print(RepositoryVolume(storage: storeid, snapshot: s))
    }
}

import Foundation
