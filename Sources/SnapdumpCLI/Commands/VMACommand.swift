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

/// An archive argument as an absolute path. `-` (stdin, as `qmrestore -`) is
/// refused with a way out: the readers seek (header peek, parallel frames),
/// so a `backup --stdout` stream is read once it is in a file.
func archivePath(_ p: String) throws -> String {
    if p == "-" {
        throw CLIError("reading an archive from standard input is not supported: save the stream to a file first (snapdump backup … --stdout > FILE)")
    }
    return absolutePath(p)
}
