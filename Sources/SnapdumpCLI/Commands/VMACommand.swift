import ArgumentParser

/// `snapdump vma …`: Proxmox's `vma` tool for archives (plain, .zst or .gz).
struct VMACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vma",
        abstract: "Inspect, verify and extract VMA archives (.vma, .vma.zst, .vma.gz), like Proxmox's vma.",
        subcommands: [VMAList.self, VMAConfigCommand.self, VMAExtract.self, VMAVerify.self]
    )
}

/// Makes a command-line path absolute.
func absolutePath(_ p: String) -> String { p.hasPrefix("/") ? p : FileManagerCWD.absolute(p) }
