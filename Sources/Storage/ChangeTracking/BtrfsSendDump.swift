import Foundation

/// Reads the changes of one file from `btrfs receive --dump` of a
/// `btrfs send --no-data -p <base> <new>` stream. Without data, send
/// describes every written range — holes punched and extents cloned
/// included — as `update_extent <path> offset=… len=…`, and size changes as
/// `truncate <path> size=…` (change-tracking.md: `send_hole`,
/// `send_update_extent`).
///
/// Any other record that replaces or moves the file (mkfile, rename, link,
/// unlink, …) means the new file is not the base's file with some ranges
/// changed: the result is then `.unknown`.
public enum BtrfsSendDump {
    /// Records that change nothing of the file's content.
    static let metadataOnly: Set<String> = ["utimes", "chown", "chmod", "set_xattr", "remove_xattr", "fileattr", "enable_verity"]

    /// `path` is the file's path as the dump prints it (`./<new snapshot dir name>/<file>`).
    public static func changes(dump: String, path: String, into result: inout ChangedChunks) -> ChangeTracking {
        for line in dump.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { continue }
            let command = String(fields[0])
            let target = String(fields[1])
            let args = Dictionary(fields.dropFirst(2).compactMap { f -> (String, String)? in
                guard let eq = f.firstIndex(of: "=") else { return nil }
                return (String(f[..<eq]), String(f[f.index(after: eq)...]))
            }, uniquingKeysWith: { a, _ in a })
            if args["dest"] == path {
                return .unknown(reason: "btrfs send: '\(path)' was replaced by \(command) from \(target)")
            }
            guard target == path else { continue }
            switch command {
            case "clone" where args["from"] == path && args["clone_offset"] == args["offset"]:
                // The file cloned onto itself at the same offset: the unchanged rest of an extent a
                // write split in two. Nothing changes (counting it read 178 instead of 20 chunks of a
                // 2 GiB real disk with 20 changed MiB).
                continue
            case "update_extent", "write", "clone", "fallocate":
                guard let o = args["offset"].flatMap(UInt64.init), let l = args["len"].flatMap(UInt64.init) else {
                    return .unknown(reason: "btrfs send: cannot read '\(line)'")
                }
                result.insert(offset: o, length: l)
            case "truncate":
                guard let s = args["size"].flatMap(UInt64.init) else {
                    return .unknown(reason: "btrfs send: cannot read '\(line)'")
                }
                // Bytes past the old end read as zeros now, or were cut off: the chunk holding the cut and all after.
                result.insert(offset: s == 0 ? 0 : s - 1, length: UInt64.max)
            case _ where metadataOnly.contains(command):
                continue
            default:
                return .unknown(reason: "btrfs send: '\(path)' has a \(command) record (file replaced or moved, not changed in place)")
            }
        }
        return .changed(result)
    }
}
