import ArgumentParser
import Archive

/// `snapdump vma config <archive> [--config NAME]`: prints a config file of the archive.
struct VMAConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Print the VM config (qemu-server.conf) stored in an archive.")

    @Argument(help: "Archive file.") var archive: String
    @Option(name: [.customShort("c"), .customLong("config")], help: "Config file name (default qemu-server.conf).")
    var config = "qemu-server.conf"

    func run() throws {
        let reader = try VMAReader(path: archivePath(archive))
        guard let data = reader.config(named: config) else {
            let names = reader.header.configs.map(\.name).joined(separator: ", ")
            throw ValidationError("archive '\(archive)' has no config '\(config)' (it has: \(names.isEmpty ? "none" : names))")
        }
        let text = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
        print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
    }
}
