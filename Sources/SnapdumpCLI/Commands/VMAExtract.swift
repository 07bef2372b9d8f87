import ArgumentParser
import Archive

/// `snapdump vma extract <archive> <targetdir>`: sparse raw device files and the config files.
struct VMAExtract: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Extract devices as sparse raw files (disk-drive-scsi0.raw) and the config files into a new directory.")

    @Argument(help: "Archive file.") var archive: String
    @Argument(help: "Target directory; must not exist.") var targetdir: String

    func run() throws {
        let r = try VMAExtractor.extract(archive: archivePath(archive), to: absolutePath(targetdir)) { printError($0) }
        for c in r.configs { print("CFG: \(c)") }
        for d in r.devices { print("DEV: \(d.path) \(d.device.size) sha256 \(d.digest.hex)") }
        if r.metadataChecked {
            print("verified SHA-256 of \(r.devices.count) device(s) against snapdump.json")
        } else {
            printError("WARN: archive has no snapdump.json: device digests not checked")
        }
    }
}
