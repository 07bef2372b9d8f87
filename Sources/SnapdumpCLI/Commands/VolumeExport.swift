import ArgumentParser
import Foundation
import SnapdumpSystem
import Storage

struct VolumeExport: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Write a volume's (or a snapshot's) raw content to a file (sparse) or stdout.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Volume id, storeid:volname.") var volid: String
    @Option(help: "Export this snapshot instead of the current content.") var snapshot: String?
    @Option(help: "Output file, or - for stdout.") var output: String = "-"

    func run() throws {
        let vol = try VolumeID(parsing: volid)
        if let snapshot { try NameRules.validateSnapshotName(snapshot) }
        let source = try global.storages().plugin(for: vol).openBlockSource(vol, snapshot: snapshot)
        defer { try? source.close() }
        if output == "-" {
            _ = try VolumeExporter.export(source, toStream: File(adopting: dup(1), path: "<stdout>"))
        } else {
            let r = try VolumeExporter.export(source, toFile: output)
            FileHandle.standardError.write(Data("exported \(source.name): \(r.bytes) bytes, \(r.dataBytes) bytes of data, to \(output)\n".utf8))
        }
        try source.close()
    }
}
