import ArgumentParser
import Archive

/// `snapdump vma verify <archive>`: header and extent MD5s, cluster coverage,
/// per-device SHA-256 against snapdump.json. Exit status 1 on the first problem.
struct VMAVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Verify an archive: MD5s, every cluster exactly once, device SHA-256s from snapdump.json.")

    @Argument(help: "Archive file.") var archive: String

    func run() throws {
        let path = try archivePath(archive)
        let v: VMAReader.Verification
        do {
            let reader = try VMAReader(path: path)
            let total = reader.header.devices.reduce(UInt64(0)) { $0 + $1.size }
            v = try reader.verify(progress: ReadProgress(total: total) { printError($0) })
        } catch let e as ArchiveError {
            var line = "Error: verification failed: \(e)"
            if e.offset == nil && e.code == .digestMismatch {
                line += " (no offset: snapdump.json holds one digest per device, not per chunk)"
            }
            printError(line)
            throw ExitCode(1)
        }
        print("archive '\(archive)': \(v.summary.extents) extents, \(v.summary.clusters) clusters, \(v.summary.streamBytes) bytes: OK")
        if v.metadataChecked {
            for (id, d) in v.digests.sorted(by: { $0.key < $1.key }) { print("device \(id): sha256 \(d.hex) OK") }
        } else {
            print("no snapdump.json: device content digests not checked (not written by snapdump)")
        }
    }
}
