import Foundation
import SnapdumpSystem

/// The persistent dirty bitmaps of a qcow2 image, read from the file itself
/// (no `qemu-img info`, no `qemu-nbd -B`): only while no QEMU has the image
/// open (a stopped guest) — an open image's bitmaps live in QEMU's memory and
/// are all `in_use` in the file.
///
/// Facts from QEMU's `docs/interop/qcow2.txt` (the qcow2 specification):
/// big-endian fields; header (magic `QFI\xfb`, version 2 or 3, `cluster_bits`
/// at 20, virtual `size` at 24, `crypt_method` at 32; v3: feature bits at 72,
/// 80, 88, `header_length` at 100); header extensions after the header within
/// the first cluster (type u32, length u32, data padded to 8; type 0 ends);
/// the bitmaps extension (type 0x23852875, 24 bytes: `nb_bitmaps`, reserved,
/// `bitmap_directory_size`, `bitmap_directory_offset`), consistent only while
/// autoclear bit 0 is set; directory entries (table offset u64, table size u32,
/// flags u32 — bit 0 `in_use`, bit 1 `auto` —, type u8 (1: dirty tracking),
/// `granularity_bits` u8, name size u16, extra data size u32, extra data,
/// name, zero padding to 8); bitmap table entries (bits 9–55 the data
/// cluster's offset; offset 0: bit 0 says all zeros or all ones); bit `n` of
/// the data (bit `n % 8` of byte `n / 8`, least significant first) covers
/// bytes `n * granularity ..< (n + 1) * granularity` of the virtual disk.
/// QEMU's limits where it refuses an image (granularity 9–31 bits, name ≤ 1023
/// bytes, ≤ 65535 bitmaps, no extra data) are kept, so this reads what QEMU
/// reads and refuses what it refuses.
///
/// The image is untrusted input: every offset and size is checked against the
/// file before it is used, and a violation is an error naming the file and the
/// field. What this reader does not handle (encryption, an external data file,
/// the dirty or corrupt bit, unknown incompatible features, extra data) throws
/// `Unsupported`: the caller asks QEMU's tools instead.
public struct QCOW2Bitmaps: Sendable {
    /// One bitmap directory entry.
    public struct Entry: Sendable, Equatable {
        public var name: String
        /// `in_use`: not stored correctly (a QEMU ended without storing it): its data is unusable.
        public var inUse: Bool
        /// `auto`: enabled (QEMU records into it when it opens the image).
        public var auto: Bool
        public var granularityBits: Int
        var tableOffset: UInt64
        var tableSize: UInt64
        /// Where the directory entry starts in the file (tests patch it).
        var entryOffset: UInt64
        public var granularity: UInt64 { 1 << UInt64(granularityBits) }
    }

    /// The image has something this reader leaves to QEMU (the reason says what).
    public struct Unsupported: Error, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public let path: String
    /// Virtual disk size (header `size`).
    public let size: UInt64
    public let clusterSize: UInt64
    /// The bitmaps, in directory order; empty when the image has none, or when its bitmaps extension
    /// is not marked consistent (autoclear bit 0 clear: a program without bitmap support wrote the
    /// image; QEMU then drops every bitmap, and so does this).
    public let bitmaps: [Entry]
    /// Where the bitmaps extension (its type field) and the directory are in the file (tests patch them).
    let extensionOffset: UInt64?, directoryOffset: UInt64?
    private let file: File
    private let fileSize: UInt64

    static let bitmapsExtension: UInt32 = 0x2385_2875
    /// QEMU's limits (block/qcow2.h, block/qcow2-bitmap.c): it refuses images beyond them.
    static let maxBitmaps: UInt64 = 65535, maxDirectorySize: UInt64 = 1024 * 65535
    static let maxTableSize: UInt64 = 0x800_0000, maxPhysicalSize: UInt64 = 0x2000_0000
    /// Bitmap table entry: bits 1–8 and 56–63 reserved, 9–55 the offset, bit 0 "all ones" (offset 0 only).
    static let tableReserved: UInt64 = 0xff00_0000_0000_01fe, tableOffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00

    /// Reads the header, its extensions and the bitmap directory of `path`.
    public static func read(_ path: String) throws -> QCOW2Bitmaps {
        let file = try File.openForReading(path)
        let fileSize = try file.size()
        func bad(_ what: String) -> StorageError { StorageError(.backend, "qcow2 image '\(path)': \(what)") }
        var header = [UInt8](repeating: 0, count: 104)
        let got = try header.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        guard got >= 72 else { throw bad("file too short for a qcow2 header (\(got) bytes)") }
        guard header[0..<4] == [0x51, 0x46, 0x49, 0xFB] else { throw bad("no qcow2 magic") }
        let version = be(header, 4, 4)
        guard version == 2 || version == 3 else { throw Unsupported(reason: "qcow2 image '\(path)' has version \(version)") }
        let clusterBits = be(header, 20, 4)
        // The spec: at least 9; QEMU opens at most 2 MiB clusters.
        guard (9...21).contains(clusterBits) else { throw bad("cluster_bits \(clusterBits) outside 9...21") }
        let clusterSize: UInt64 = 1 << clusterBits
        let size = be(header, 24, 8)
        let crypt = be(header, 32, 4)
        guard crypt == 0 else { throw Unsupported(reason: "qcow2 image '\(path)' is encrypted (crypt_method \(crypt))") }
        var headerLength: UInt64 = 72, autoclear: UInt64 = 0
        if version == 3 {
            guard got == 104 else { throw bad("file too short for a qcow2 v3 header (\(got) bytes)") }
            let incompatible = be(header, 72, 8)
            autoclear = be(header, 88, 8)
            headerLength = be(header, 100, 4)
            guard headerLength >= 104, headerLength % 8 == 0, headerLength <= clusterSize else {
                throw bad("header_length \(headerLength) (must be at least 104, a multiple of 8, within the first cluster)")
            }
            // Bit 0 dirty (refcounts to repair), 1 corrupt, 2 external data file, 3 compression type, 4 extended L2.
            // The bitmaps do not depend on 3 and 4; the rest (and any unknown bit) is QEMU's to handle.
            let left = incompatible & ~UInt64(0b11000)
            if left != 0 {
                let names = [(0, "dirty"), (1, "corrupt"), (2, "external data file")].filter { left & (1 << $0.0) != 0 }.map(\.1)
                let unknown = left & ~UInt64(0b111)
                throw Unsupported(reason: "qcow2 image '\(path)' has incompatible features "
                                  + (names + (unknown != 0 ? [String(format: "unknown 0x%llx", unknown)] : [])).joined(separator: ", "))
            }
        }
        // Header extensions: from header_length to the end of the first cluster (nor past the file's end).
        let areaEnd = min(clusterSize, fileSize)
        guard headerLength <= areaEnd else { throw bad("header_length \(headerLength) past the end of the file (\(fileSize) bytes)") }
        var area = [UInt8](repeating: 0, count: Int(areaEnd - headerLength))
        let areaGot = try area.withUnsafeMutableBytes { try file.read(into: $0, at: headerLength) }
        guard areaGot == area.count else { throw bad("file shorter than its header extension area") }
        var pos = 0
        var bitmapsExt: [UInt8]?, extensionOffset: UInt64?
        while true {
            guard pos + 8 <= area.count else { throw bad("header extensions run past the first cluster (no end marker)") }
            let type = UInt32(be(area, pos, 4)), length = be(area, pos + 4, 4)
            if type == 0 { break }
            guard length <= UInt64(area.count - pos - 8) else {
                throw bad(String(format: "header extension 0x%08x at offset %llu: length %llu runs past the first cluster",
                                 type, UInt64(pos) + headerLength, length))
            }
            if type == bitmapsExtension {
                guard length == 24 else { throw bad("bitmaps extension length \(length), must be 24") }
                guard bitmapsExt == nil else { throw bad("two bitmaps extensions") }
                bitmapsExt = Array(area[pos + 8..<pos + 32])
                extensionOffset = headerLength + UInt64(pos)
            }
            pos += 8 + Int((length + 7) & ~7)
        }
        var entries: [Entry] = []
        // Autoclear bit 0 clear: the extension is not consistent; QEMU ignores it (and drops it on its next write).
        if let ext = bitmapsExt, autoclear & 1 != 0 {
            entries = try readDirectory(ext, path: path, file: file, fileSize: fileSize, clusterSize: clusterSize, size: size, bad: bad)
        }
        return QCOW2Bitmaps(path: path, size: size, clusterSize: clusterSize, bitmaps: entries, extensionOffset: extensionOffset,
                            directoryOffset: bitmapsExt.map { be($0, 16, 8) }, file: file, fileSize: fileSize)
    }

    private static func readDirectory(_ ext: [UInt8], path: String, file: File, fileSize: UInt64, clusterSize: UInt64, size: UInt64,
                                      bad: (String) -> StorageError) throws -> [Entry] {
        let count = be(ext, 0, 4), reserved = be(ext, 4, 4), dirSize = be(ext, 8, 8), dirOffset = be(ext, 16, 8)
        guard count >= 1, count <= maxBitmaps else { throw bad("nb_bitmaps \(count) outside 1...\(maxBitmaps)") }
        guard reserved == 0 else { throw bad("bitmaps extension reserved field \(reserved), must be 0") }
        guard dirSize > 0, dirSize <= maxDirectorySize else { throw bad("bitmap_directory_size \(dirSize) outside 1...\(maxDirectorySize)") }
        guard dirOffset % clusterSize == 0, dirOffset > 0 else { throw bad("bitmap_directory_offset \(dirOffset) not a nonzero multiple of the cluster size") }
        guard dirOffset <= fileSize, dirSize <= fileSize - dirOffset else {
            throw bad("bitmap directory at \(dirOffset) (\(dirSize) bytes) past the end of the file (\(fileSize) bytes)")
        }
        var dir = [UInt8](repeating: 0, count: Int(dirSize))
        guard try dir.withUnsafeMutableBytes({ try file.read(into: $0, at: dirOffset) }) == dir.count else {
            throw bad("bitmap directory at \(dirOffset) cut short")
        }
        var entries: [Entry] = []
        var pos = 0
        while pos < dir.count {
            guard pos + 24 <= dir.count else { throw bad("bitmap directory entry \(entries.count) cut short") }
            guard UInt64(entries.count) < count else { throw bad("more bitmap directory entries than nb_bitmaps \(count)") }
            let tableOffset = be(dir, pos, 8), tableSize = be(dir, pos + 8, 4), flags = be(dir, pos + 12, 4)
            let type = dir[pos + 16], granularityBits = Int(dir[pos + 17])
            let nameSize = Int(be(dir, pos + 18, 2)), extraSize = be(dir, pos + 20, 4)
            let entrySize = (24 + UInt64(nameSize) + extraSize + 7) & ~7
            guard entrySize <= UInt64(dir.count - pos) else { throw bad("bitmap directory entry \(entries.count) runs past the directory") }
            let nameStart = pos + 24 + Int(extraSize)
            let name = String(decoding: dir[nameStart..<nameStart + nameSize], as: UTF8.self)
            let what = "bitmap '\(name)'"
            guard extraSize == 0 else { throw Unsupported(reason: "qcow2 image '\(path)': \(what) has extra data") }
            guard nameSize >= 1, nameSize <= 1023 else { throw bad("\(what): name size \(nameSize) outside 1...1023") }
            guard type == 1 else { throw bad("\(what): type \(type), not 1 (dirty tracking)") }
            // Bit 2 (extra_data_compatible) is meaningless without extra data; QEMU refuses it like 3–31.
            guard flags & ~UInt64(3) == 0 else { throw bad(String(format: "\(what): reserved flags 0x%llx", flags)) }
            guard (9...31).contains(granularityBits) else { throw bad("\(what): granularity_bits \(granularityBits) outside 9...31") }
            guard tableSize >= 1, tableSize <= maxTableSize else { throw bad("\(what): bitmap_table_size \(tableSize) outside 1...\(maxTableSize)") }
            guard tableOffset > 0, tableOffset % clusterSize == 0 else {
                throw bad("\(what): bitmap_table_offset \(tableOffset) not a nonzero multiple of the cluster size")
            }
            let physical = tableSize * clusterSize
            guard physical <= maxPhysicalSize else { throw bad("\(what): \(tableSize) bitmap clusters, more than QEMU's limit") }
            let inUse = flags & 1 != 0
            // A consistent bitmap must cover the disk (an in_use one may be stale after a resize).
            if !inUse && size > (physical * 8) << UInt64(granularityBits) {
                throw bad("\(what): \(tableSize) bitmap clusters cannot cover the disk's \(size) bytes")
            }
            entries.append(Entry(name: name, inUse: inUse, auto: flags & 2 != 0, granularityBits: granularityBits,
                                 tableOffset: tableOffset, tableSize: tableSize, entryOffset: dirOffset + UInt64(pos)))
            pos += Int(entrySize)
        }
        guard UInt64(entries.count) == count else { throw bad("\(entries.count) bitmap directory entries, nb_bitmaps says \(count)") }
        return entries
    }

    /// Calls `dirty(offset, length)` for each run of dirty granules of bitmap `name`, in order
    /// (the last may reach past the disk's end by less than a granule: callers clip to `size`). Throws for a missing or `in_use` bitmap and for
    /// any table entry or data cluster that is malformed or outside the file: never a silent "clean".
    public func forEachDirtyRange(of name: String, _ dirty: (_ offset: UInt64, _ length: UInt64) -> Void) throws {
        func bad(_ what: String) -> StorageError { StorageError(.backend, "qcow2 image '\(path)', bitmap '\(name)': \(what)") }
        guard let e = bitmaps.first(where: { $0.name == name }) else {
            throw StorageError(.notFound, "qcow2 image '\(path)' has no dirty bitmap '\(name)'")
        }
        guard !e.inUse else { throw bad("inconsistent (in_use: QEMU ended without storing it)") }
        let granularity = e.granularity
        let bits = size / granularity + (size % granularity == 0 ? 0 : 1)
        let dataBytes = (bits + 7) / 8
        let clusters = (dataBytes + clusterSize - 1) / clusterSize
        guard clusters == e.tableSize else { throw bad("bitmap_table_size \(e.tableSize), the disk needs \(clusters)") }
        guard e.tableOffset <= fileSize, e.tableSize * 8 <= fileSize - e.tableOffset else {
            throw bad("bitmap table at \(e.tableOffset) (\(e.tableSize) entries) past the end of the file (\(fileSize) bytes)")
        }
        var table = [UInt8](repeating: 0, count: Int(e.tableSize * 8))
        guard try table.withUnsafeMutableBytes({ try file.read(into: $0, at: e.tableOffset) }) == table.count else {
            throw bad("bitmap table at \(e.tableOffset) cut short")
        }
        let bitsPerCluster = clusterSize * 8
        var data = [UInt8](repeating: 0, count: Int(clusterSize))
        // The open run of dirty granules, carried across clusters.
        var runStart: UInt64?
        func close(at bit: UInt64) {
            if let s = runStart { dirty(s * granularity, (bit - s) * granularity); runStart = nil }
        }
        for i in 0..<Int(e.tableSize) {
            let entry = Self.be(table, i * 8, 8)
            let first = UInt64(i) * bitsPerCluster, last = min(first + bitsPerCluster, bits)
            guard entry & Self.tableReserved == 0 else { throw bad(String(format: "bitmap table entry %d: reserved bits set (0x%016llx)", i, entry)) }
            let offset = entry & Self.tableOffsetMask
            if offset == 0 {
                if entry & 1 != 0 {
                    if runStart == nil { runStart = first }
                } else {
                    close(at: first)
                }
                continue
            }
            guard entry & 1 == 0 else { throw bad("bitmap table entry \(i): all-ones bit set with a data offset") }
            guard offset % clusterSize == 0 else { throw bad("bitmap table entry \(i): data offset \(offset) not cluster aligned") }
            guard offset <= fileSize, clusterSize <= fileSize - offset else {
                throw bad("bitmap table entry \(i): data cluster at \(offset) past the end of the file (\(fileSize) bytes)")
            }
            guard try data.withUnsafeMutableBytes({ try file.read(into: $0, at: offset) }) == data.count else {
                throw bad("bitmap data cluster at \(offset) cut short")
            }
            // Only the bits that cover the disk (the spec wants the tail zero; it is not trusted to be).
            let count = last - first
            data.withUnsafeBytes { raw in
                var b: UInt64 = 0
                while b < count {
                    // Whole zero or all-ones 64-bit words at once.
                    if b % 64 == 0, count - b >= 64 {
                        let word = raw.loadUnaligned(fromByteOffset: Int(b / 8), as: UInt64.self)
                        if word == 0 { close(at: first + b); b += 64; continue }
                        if word == ~0 { if runStart == nil { runStart = first + b }; b += 64; continue }
                    }
                    if raw[Int(b / 8)] & (1 << (b % 8)) != 0 {
                        if runStart == nil { runStart = first + b }
                    } else {
                        close(at: first + b)
                    }
                    b += 1
                }
            }
        }
        close(at: bits)
    }

    /// The chunks bitmap `name` marks dirty, as `DirtyBitmap.changedChunks` reads them over NBD
    /// (the same ranges, clipped to the disk; `baseSize` the disk's size at the previous backup).
    public func changedChunks(bitmap name: String, baseSize: UInt64, chunkSize: UInt64) throws -> ChangedChunks {
        var result = ChangedChunks(chunkSize: chunkSize, baseSize: baseSize, size: size, method: DirtyBitmap.method)
        try forEachDirtyRange(of: name) { result.insert(offset: $0, length: $1) }
        return result
    }

    /// Big-endian unsigned integer of `count` bytes at `at` (the caller checked the bounds).
    static func be(_ bytes: [UInt8], _ at: Int, _ count: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in at..<at + count { v = v << 8 | UInt64(bytes[i]) }
        return v
    }
}
