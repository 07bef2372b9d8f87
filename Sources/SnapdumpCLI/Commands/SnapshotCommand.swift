import ArgumentParser

/// `snapdump snapshot …`: storage snapshots of volumes.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Create, delete and list storage snapshots of volumes.",
        subcommands: [SnapshotCreate.self, SnapshotDelete.self, SnapshotList.self]
    )
}
