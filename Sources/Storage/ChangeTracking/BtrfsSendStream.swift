import Foundation

/// Reads the changes of one file from a `btrfs send --no-data -p <base> <new>`
/// stream, parsed here rather than printed by `btrfs receive --dump` and read
/// back as text (a second process and 0.4 s of a 0.6 s incremental run under
/// load). The format is the kernel's (`fs/btrfs/send.h`): the magic
/// `btrfs-stream\0` and a little-endian version, then commands, each a
/// 10-byte header (payload length, command number, CRC-32C of header and
/// payload with the CRC field zeroed) and type-length-value attributes,
/// ending with an `end` command.
///
/// Without data, send describes every written range — holes punched and
/// extents cloned included — as `update_extent` (offset, length), and size
/// changes as `truncate` (change-tracking.md: `send_hole`, `send_update_extent`).
/// Any other record that replaces or moves the file (mkfile, rename, link,
/// unlink, …) means the new file is not the base's file with some ranges
/// changed: the result is then `.unknown`. So is a stream that is not whole
/// and intact (bad magic, a CRC mismatch, a command cut short, no `end`):
/// the reason names the command and its byte offset.
public enum BtrfsSendStream {
    /// Command numbers (send.h `btrfs_send_cmd`, protocol versions 1–3), named as `btrfs receive --dump` prints them.
    static let commandNames: [UInt16: String] = [
        1: "subvol", 2: "snapshot", 3: "mkfile", 4: "mkdir", 5: "mknod", 6: "mkfifo", 7: "mksock", 8: "symlink",
        9: "rename", 10: "link", 11: "unlink", 12: "rmdir", 13: "set_xattr", 14: "remove_xattr", 15: "write", 16: "clone",
        17: "truncate", 18: "chmod", 19: "chown", 20: "utimes", 21: "end", 22: "update_extent", 23: "fallocate",
        24: "fileattr", 25: "encoded_write", 26: "enable_verity",
    ]

    /// Attribute numbers (send.h `BTRFS_SEND_A_*`) of the records read here.
    enum Attribute {
        static let uuid: UInt16 = 1, size: UInt16 = 4, path: UInt16 = 15, pathTo: UInt16 = 16, pathLink: UInt16 = 17
        static let fileOffset: UInt16 = 18, data: UInt16 = 19, cloneUUID: UInt16 = 20, clonePath: UInt16 = 22
        static let cloneOffset: UInt16 = 23, cloneLength: UInt16 = 24, unencodedFileLength: UInt16 = 27
    }

    /// Records that change nothing of the file's content.
    static let metadataOnly: Set<String> = ["utimes", "chown", "chmod", "set_xattr", "remove_xattr", "fileattr", "enable_verity"]

    static let magic = Array("btrfs-stream\0".utf8)

    /// One command: its name and attributes (value byte ranges in the stream, the first of each type).
    struct Command {
        var name: String
        var offset: Int
        var attributes: [UInt16: Range<Int>]
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// `path` is the file's path inside the snapshot, as the stream names it (`vm-100-disk-0.raw`).
    public static func changes(stream: [UInt8], path: String, into result: inout ChangedChunks) -> ChangeTracking {
        let commands: [Command]
        do { commands = try parse(stream) } catch {
            return .unknown(reason: "btrfs send stream (\(stream.count) bytes): \(error)")
        }
        let target = Array(path.utf8)
        func bytes(_ c: Command, _ a: UInt16) -> ArraySlice<UInt8>? { c.attributes[a].map { stream[$0] } }
        func number(_ c: Command, _ a: UInt16) -> UInt64? {
            guard let r = c.attributes[a], r.count == 8 else { return nil }
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(stream[r.lowerBound + $1]) << (8 * UInt64($1)) }
        }
        // The parent snapshot (`-p`, the base): a snapshot command's clone UUID.
        var parent: ArraySlice<UInt8>?
        for c in commands {
            if c.name == "snapshot" { parent = bytes(c, Attribute.cloneUUID) }
            let dest = c.name == "rename" ? bytes(c, Attribute.pathTo) : c.name == "link" || c.name == "symlink" ? bytes(c, Attribute.pathLink) : nil
            if let dest, dest.elementsEqual(target) {
                return .unknown(reason: "btrfs send: '\(path)' was replaced by \(c.name) from '\(string(bytes(c, Attribute.path)))'")
            }
            guard let p = bytes(c, Attribute.path), p.elementsEqual(target) else { continue }
            func range(_ lengthAttribute: UInt16?) -> (UInt64, UInt64)? {
                guard let o = number(c, Attribute.fileOffset) else { return nil }
                if let lengthAttribute { return number(c, lengthAttribute).map { (o, $0) } }
                return c.attributes[Attribute.data].map { (o, UInt64($0.count)) }
            }
            let changed: (UInt64, UInt64)?
            switch c.name {
            case "clone":
                // The base's file cloned in at the same offset: the unchanged rest of an extent a write
                // split in two, the bytes the base has there. Nothing changes (counting it read 178 instead
                // of 20 chunks of a 2 GiB real disk with 20 changed MiB). `btrfs receive --dump` prints
                // such a clone as from the new snapshot's own path: its source is the parent's UUID.
                if let p = parent, bytes(c, Attribute.cloneUUID)?.elementsEqual(p) == true,
                   bytes(c, Attribute.clonePath)?.elementsEqual(target) == true,
                   let from = number(c, Attribute.cloneOffset), from == number(c, Attribute.fileOffset) { continue }
                changed = range(Attribute.cloneLength)
            case "update_extent", "fallocate": changed = range(Attribute.size)
            case "write": changed = range(nil)
            case "encoded_write": changed = range(Attribute.unencodedFileLength)
            case "truncate":
                guard let s = number(c, Attribute.size) else {
                    return .unknown(reason: "btrfs send: truncate of '\(path)' at byte \(c.offset) has no size")
                }
                // Bytes past the old end read as zeros now, or were cut off: the chunk holding the cut and all after.
                result.insert(offset: s == 0 ? 0 : s - 1, length: UInt64.max)
                continue
            case _ where metadataOnly.contains(c.name):
                continue
            default:
                return .unknown(reason: "btrfs send: '\(path)' has a \(c.name) record (file replaced or moved, not changed in place)")
            }
            guard let (o, l) = changed else {
                return .unknown(reason: "btrfs send: \(c.name) of '\(path)' at byte \(c.offset) lacks its offset or length")
            }
            result.insert(offset: o, length: l)
        }
        return .changed(result)
    }

    private static func string(_ b: ArraySlice<UInt8>?) -> String { b.map { String(decoding: $0, as: UTF8.self) } ?? "?" }

    /// Every command of a whole, intact stream; throws naming what is wrong and where.
    static func parse(_ s: [UInt8]) throws -> [Command] {
        guard s.count >= magic.count + 4, s[0..<magic.count].elementsEqual(magic) else {
            throw Malformed(description: "not a btrfs send stream (no 'btrfs-stream' magic)")
        }
        let version = le32(s, magic.count)
        guard (1...3).contains(version) else { throw Malformed(description: "send stream version \(version) is not 1, 2 or 3") }
        var pos = magic.count + 4
        var commands: [Command] = []
        while pos < s.count {
            guard s.count - pos >= 10 else { throw Malformed(description: "truncated: a command header at byte \(pos) is cut short") }
            let length = Int(le32(s, pos)), number = UInt16(s[pos + 4]) | UInt16(s[pos + 5]) << 8, crc = le32(s, pos + 6)
            let name = commandNames[number] ?? "command \(number)"
            guard s.count - pos - 10 >= length else {
                throw Malformed(description: "truncated: \(name) at byte \(pos) needs \(length) bytes, \(s.count - pos - 10) follow")
            }
            var c = CRC32C.update(0, s[pos..<pos + 6])
            c = CRC32C.update(c, [0, 0, 0, 0])
            c = CRC32C.update(c, s[pos + 10..<pos + 10 + length])
            guard c == crc else {
                throw Malformed(description: "\(name) at byte \(pos): CRC-32C \(hex(c)), the stream says \(hex(crc)) (corrupted)")
            }
            guard commandNames[number] != nil else { throw Malformed(description: "unknown \(name) at byte \(pos)") }
            var attributes: [UInt16: Range<Int>] = [:]
            var a = pos + 10
            let end = pos + 10 + length
            while a < end {
                guard end - a >= 2 else { throw Malformed(description: "\(name) at byte \(pos): attribute at byte \(a) cut short") }
                let type = UInt16(s[a]) | UInt16(s[a + 1]) << 8
                if version >= 2 && type == Attribute.data {
                    // From version 2 on, data has no length: it runs to the command's end.
                    if attributes[type] == nil { attributes[type] = a + 2..<end }
                    break
                }
                guard end - a >= 4 else { throw Malformed(description: "\(name) at byte \(pos): attribute at byte \(a) cut short") }
                let l = Int(UInt16(s[a + 2]) | UInt16(s[a + 3]) << 8)
                guard end - a - 4 >= l else {
                    throw Malformed(description: "\(name) at byte \(pos): attribute \(type) at byte \(a) runs past the command")
                }
                if attributes[type] == nil { attributes[type] = a + 4..<a + 4 + l }
                a += 4 + l
            }
            commands.append(Command(name: name, offset: pos, attributes: attributes))
            pos = end
            if name == "end" {
                guard pos == s.count else { throw Malformed(description: "\(s.count - pos) bytes after the end command at byte \(pos)") }
                return commands
            }
        }
        throw Malformed(description: "truncated: no end command after \(commands.count) commands")
    }

    private static func le32(_ s: [UInt8], _ at: Int) -> UInt32 {
        UInt32(s[at]) | UInt32(s[at + 1]) << 8 | UInt32(s[at + 2]) << 16 | UInt32(s[at + 3]) << 24
    }

    private static func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as btrfs computes
/// it: the seed goes in as given and comes out without a final inversion.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    }

    static func update<C: Collection>(_ crc: UInt32, _ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c = crc
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c
    }
}
