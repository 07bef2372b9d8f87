import ArgumentParser

/// `snapdump storage …`: Proxmox's pvesm for storages.
struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Manage storages (storage.cfg), like pvesm.",
        subcommands: [StorageAdd.self, StorageRemove.self, StorageList.self, StorageStatusCommand.self]
    )
}
