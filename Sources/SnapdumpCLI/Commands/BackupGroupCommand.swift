import ArgumentParser

/// `snapdump backup …`: running a backup stays `snapdump backup <vmid>… [options]`
/// (the default subcommand); the archive subcommands sit beside it, as
/// Proxmox's `pvesm list --content backup` and the content API do.
struct BackupGroupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up guests (vzdump), and list, remove, protect and annotate backup archives.",
        discussion: """
            snapdump backup <vmid>… [--mode snapshot] …   run a backup (vzdump); the default
            snapdump backup list <storeid> [--vmid N]      list archives
            snapdump backup remove|protect|unprotect <archive>
            snapdump backup notes <archive> [--set TEXT]
            An <archive> is a volume id (local:backup/vzdump-qemu-100-….vma.zst) or a path.
            """,
        subcommands: [BackupCommand.self, BackupList.self, BackupRemove.self, BackupProtect.self,
                      BackupUnprotect.self, BackupNotes.self],
        defaultSubcommand: BackupCommand.self
    )
}
