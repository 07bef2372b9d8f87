import Foundation
import SnapdumpSystem

/// A fingerprint of a directory tree — every entry's kind, size and content
/// digest — to assert that a failed command changed nothing.
public struct FileTree: Equatable, Sendable, CustomStringConvertible {
    public struct Entry: Equatable, Sendable {
        public var kind: Character   // "d", "f", "l", "?"
        public var size: UInt64
        public var digest: String

        public init(kind: Character, size: UInt64, digest: String) {
            self.kind = kind
            self.size = size
            self.digest = digest
        }
    }

    public var root: String
    public var entries: [String: Entry]

    /// A tree of things that are not files (RBD images and snapshots, for one).
    public init(root: String, entries: [String: Entry]) {
        self.root = root
        self.entries = entries
    }

    /// Walks `root` (not following symlinks, not crossing into `excluding`).
    public static func capture(_ root: String, excluding: Set<String> = []) throws -> FileTree {
        var entries: [String: Entry] = [:]
        func walk(_ rel: String) throws {
            let abs = rel.isEmpty ? root : root + "/" + rel
            for name in try FileSystem.list(abs) {
                let r = rel.isEmpty ? name : rel + "/" + name
                if excluding.contains(r) { continue }
                let p = root + "/" + r
                var st = stat()
                guard lstat(p, &st) == 0 else { continue }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    entries[r] = Entry(kind: "d", size: 0, digest: "")
                    try walk(r)
                case S_IFREG:
                    entries[r] = Entry(kind: "f", size: UInt64(st.st_size), digest: try digest(p))
                case S_IFLNK:
                    entries[r] = Entry(kind: "l", size: 0, digest: (try? FileManager.default.destinationOfSymbolicLink(atPath: p)) ?? "")
                default:
                    entries[r] = Entry(kind: "?", size: 0, digest: "")
                }
            }
        }
        try walk("")
        return FileTree(root: root, entries: entries)
    }

    /// SHA-1 of a file's content (sha1sum: fast, and no crypto library needed here).
    public static func digest(_ path: String) throws -> String {
        let out = try Command.run(["sha1sum", "-b", path])
        return String(out.prefix(while: { $0 != " " }))
    }

    /// Regular files (relative paths), sorted.
    public var files: [String] { entries.filter { $0.value.kind == "f" }.map(\.key).sorted() }

    public var description: String {
        entries.keys.sorted().map { k in
            let e = entries[k]!
            return "\(e.kind) \(k) \(e.size) \(e.digest.prefix(12))"
        }.joined(separator: "\n")
    }

    /// Human-readable differences, empty when equal.
    public func differences(to other: FileTree) -> [String] {
        var d: [String] = []
        for k in Set(entries.keys).union(other.entries.keys).sorted() {
            switch (entries[k], other.entries[k]) {
            case (nil, _?): d.append("added: \(k)")
            case (_?, nil): d.append("removed: \(k)")
            case let (a?, b?) where a != b: d.append("changed: \(k)")
            default: break
            }
        }
        return d
    }
}
