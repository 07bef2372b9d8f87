import ArgumentParser

/// `snapdump vm …`: Proxmox's qm for snapdump's guests.
struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Create and run QEMU guests (qm).",
        subcommands: [VMCreate.self, VMConfigCommand.self, VMList.self, VMDestroy.self, VMStart.self, VMShutdown.self,
                      VMStop.self, VMSuspend.self, VMResume.self, VMStatusCommand.self, VMUnlock.self, VMMoveDisk.self]
    )
}

/// Options naming one VM.
struct VMIDArgument: ParsableArguments {
    @Argument(help: "VMID.") var vmid: Int
}
