import Foundation
import SnapdumpSystem

/// What a zfs-fuse test reads back from the pool: the dataset a raw disk file lives in, and the
/// file identity snapdump records on a base snapshot (`snapdump:object:<disk>`, "-" when none).
public enum ZFSRecords {
    /// The dataset mounted at the directory holding `file`.
    public static func dataset(holding file: String) throws -> String {
        let directory = (file as NSString).deletingLastPathComponent
        let listing = try Command.run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem"])
        guard let name = listing.split(separator: "\n").map({ $0.split(separator: "\t").map(String.init) })
            .first(where: { $0.count == 2 && $0[1] == directory })?[0] else {
            throw HarnessError("no zfs dataset is mounted at \(directory)")
        }
        return name
    }

    /// The identity recorded for disk `volname` on `dataset@snapshot`.
    public static func identity(_ volname: String, on dataset: String, snapshot: String) throws -> String {
        try Command.run(["zfs", "get", "-H", "-o", "value", "snapdump:object:\(volname)", "\(dataset)@\(snapshot)"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// What snapdump would record for `file` now: "<inode>/<size>".
    public static func liveIdentity(_ file: String) throws -> String {
        var st = stat()
        guard stat(file, &st) == 0 else { throw HarnessError("cannot stat \(file)") }
        return "\(st.st_ino)/\(st.st_size)"
    }
}
