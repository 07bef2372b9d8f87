import ArgumentParser
import Archive
import Foundation

/// `snapdump vma list <archive>`: config files and devices, as `vma list` prints them.
struct VMAList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the config files and devices of an archive.")

    @Argument(help: "Archive file.") var archive: String

    func run() throws {
        let reader = try VMAReader(path: absolutePath(archive))
        let h = reader.header
        // Checked before printing anything: a bad archive prints its error only.
        let meta = try reader.snapdumpMetadata()
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
    static func ctime(_ t: Int64) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "EEE MMM d HH:mm:ss yyyy"
        let s = f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
        // ctime pads the day of month to two characters with a space.
        let parts = s.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[2].count == 1 else { return s }
        return "\(parts[0]) \(parts[1])  \(parts[2]) \(parts[3]) \(parts[4])"
    }
}
