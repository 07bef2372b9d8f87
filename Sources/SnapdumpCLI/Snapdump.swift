import ArgumentParser
import Backup

/// The `snapdump` command: Proxmox's vzdump, pvesm and qm for any KVM host.
public struct Snapdump: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "snapdump",
        abstract: "Back up running QEMU/KVM virtual machines with zero downtime.",
        version: SnapdumpVersion.current,
        subcommands: [BackupGroupCommand.self, RestoreCommand.self, VMCommand.self, StorageCommand.self, VolumeCommand.self, SnapshotCommand.self,
                      PruneCommand.self, VMACommand.self, RepoCommand.self, JobCommand.self, ScheduleCommand.self, NotifyCommand.self, DaemonCommand.self]
    )

    public init() {}
}
