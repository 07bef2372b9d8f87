import ArgumentParser
import Archive
import Foundation
import SnapdumpSystem

/// `snapdump vma list <archive>`: config files and devices, as `vma list` prints them.
struct VMAList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the config files and devices of an archive.")

    @Argument(help: "Archive file.") var archive: String
    @OptionGroup var output: OutputOptions

    func run() throws {
        let reader = try VMAReader(path: archivePath(archive))
        let h = reader.header
        // Checked before printing anything: a bad archive prints its error only.
        let meta = try reader.snapdumpMetadata()
        if output.format != .text {
            var r = OutputRecord()
            r.add("configs", nil, .list(h.configs.map { c in
                var o = OutputRecord()
                o.add("name", nil, .string(c.name)); o.add("size", nil, .of(c.data.count))
                return .record(o)
            }))
            r.add("devices", nil, .list(h.devices.map { d in
                var o = OutputRecord()
                o.add("dev_id", nil, .of(d.id)); o.add("name", nil, .string(d.name)); o.add("size", nil, .of(d.size))
                return .record(o)
            }))
            r.add("ctime", nil, .of(h.ctime))
            r.add("uuid", nil, .string(h.uuid.uuidString.lowercased()))
            r.add("compression", nil, .string(reader.compression.rawValue))
            r.add("mode", nil, .of(meta?.mode))
            r.add("downtime_ms", nil, .of(meta?.downtimeMs))
            r.add("sha256", nil, .list((meta?.devices ?? []).map { d in
                var o = OutputRecord()
                o.add("name", nil, .string(d.name)); o.add("sha256", nil, .string(d.sha256))
                return .record(o)
            }))
            Output.object(r, output.format) { "" }
            return
        }
        for c in h.configs {
            print("CFG: size: \(c.data.count) name: \(c.name)")
        }
        for d in h.devices {
            print("DEV: dev_id=\(d.id) size: \(d.size) devname: \(d.name)")
        }
        print("CTIME: \(Self.ctime(h.ctime))")
        print("UUID: \(h.uuid.uuidString.lowercased())")
        print("COMPRESSION: \(reader.compression.rawValue)")
        if let meta {
            print("MODE: \(meta.mode)" + (meta.downtimeMs.map { " (guest downtime \($0) ms)" } ?? ""))
            for d in meta.devices { print("SHA256: \(d.name) \(d.sha256)") }
        }
    }

    /// As C's ctime() without the newline: `Tue Jan  7 10:00:00 2025`.
    static func ctime(_ t: Int64) -> String { CivilTime(t, .local).ctime }
}
