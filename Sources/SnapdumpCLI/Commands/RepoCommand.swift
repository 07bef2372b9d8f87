import ArgumentParser

/// `snapdump repo …`: the deduplicating repository, like proxmox-backup-manager's datastore commands.
struct RepoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repo",
        abstract: "Manage deduplicating backup repositories (PBS datastore layout).",
        subcommands: [RepoInit.self, RepoStatus.self, RepoVerify.self, RepoGC.self, RepoImport.self, RepoExport.self, RepoKeyCommand.self]
    )
}
