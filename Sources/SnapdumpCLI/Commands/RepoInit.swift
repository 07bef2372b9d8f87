import ArgumentParser
import Repository

/// `snapdump repo init <storeid>`: creates the layout in the storage's path.
struct RepoInit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create the repository of a repo storage (chunk store, locks).")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Storage id (type repo).") var storeid: String

    func run() throws {
        let def = try RepositoryAccess.definition(storeid, global)
        _ = try RepositoryAccess.crypt(def) // a bad key file fails now, not at the first backup
        try Repository.create(root: def.path!)
        print("repository '\(storeid)' created in \(def.path!)")
    }
}
