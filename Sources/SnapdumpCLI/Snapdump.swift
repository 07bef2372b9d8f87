import Foundation
import ArgumentParser
import Backup

/// The `snapdump` command: Proxmox's vzdump, pvesm and qm for any KVM host.
public struct Snapdump: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "snapdump",
        abstract: "Back up running QEMU/KVM virtual machines with zero downtime.",
        discussion: "Global options (--config-dir DIR) may also come before the subcommand: snapdump --config-dir DIR vm list.",
        // The one version constant, also recorded in each archive's snapdump.json.
        version: SnapdumpVersion.current,
        subcommands: [BackupGroupCommand.self, RestoreCommand.self, VMCommand.self, StorageCommand.self, VolumeCommand.self, SnapshotCommand.self,
                      PruneCommand.self, VMACommand.self, RepoCommand.self, JobCommand.self, ScheduleCommand.self, NotifyCommand.self, DaemonCommand.self]
    )

    public init() {}

    /// Runs the command line as Proxmox's tools take it (`ProxmoxArguments`).
    public static func main() async {
        await main(ProxmoxArguments.normalize(Array(CommandLine.arguments.dropFirst()), root: Snapdump.self))
    }
}
