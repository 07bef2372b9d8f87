import Foundation
import SnapdumpSystem
@testable import Storage
import Testing
import TestSupport

/// `QCOW2Bitmaps` (the qcow2 file's persistent bitmaps read by us) against QEMU:
/// images made and written by `qemu-img`/`qemu-io` (QEMU records into the enabled
/// persistent bitmaps when it opens the image), our list against `qemu-img info`,
/// our changed chunks against `qemu-nbd -B`'s block status; corrupt copies fail
/// with an error, never a crash or an empty change set.
@Suite("qcow2 bitmaps read from the file", .enabled(if: Integration.required || Command.exists("qemu-nbd")))
struct QCOW2BitmapsTests {
    static let mib: UInt64 = 1 << 20, chunk: UInt64 = 4 << 20

    static func qemuIO(_ image: String, _ commands: [String]) throws {
        try Command.run(["qemu-io", "-f", "qcow2"] + commands.flatMap { ["-c", $0] } + [image])
    }

    static func add(_ image: String, _ name: String, granularity: UInt64? = nil) throws {
        try Command.run(["qemu-img", "bitmap", "-f", "qcow2", "--add"] + (granularity.map { ["-g", "\($0)"] } ?? []) + [image, name])
    }

    /// Writes big-endian `value` of `count` bytes at `offset` of `path`.
    static func patch(_ path: String, at offset: UInt64, _ value: UInt64, count: Int) throws {
        let f = try File.open(path, O_WRONLY)
        let bytes = (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(count - 1 - $0))) }
        try bytes.withUnsafeBytes { try f.write($0, at: offset) }
        try f.close()
    }

    static func copy(_ image: String, _ to: String) throws -> String {
        try? FileManager.default.removeItem(atPath: to)
        try FileManager.default.copyItem(atPath: image, toPath: to)
        return to
    }

    /// Our list equals qemu-img info's; each bitmap's chunks equal qemu-nbd's, for `baseSizes`.
    static func expectSameAsQEMU(_ image: String, baseSizes: [UInt64] = [], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let ours = try QCOW2Bitmaps.read(image)
        #expect(try QCOW2ImageBitmaps.list(image: image) == QCOW2ImageBitmaps.listFromQemuImg(image: image), sourceLocation: sourceLocation)
        for b in ours.bitmaps where !b.inUse {
            for base in [ours.size] + baseSizes {
                let mine = try ours.changedChunks(bitmap: b.name, baseSize: base, chunkSize: chunk)
                let qemu = try DirtyBitmap.changedChunksFromQemuNBD(image: image, bitmap: b.name, baseSize: base, chunkSize: chunk)
                let ranges = { (c: ChangedChunks) in c.indices.map { "\($0): \(c.ranges(ofChunk: $0).map { "\($0.offset)+\($0.length)" })" } }
                #expect(mine == qemu, "bitmap \(b.name), base size \(base): ours \(ranges(mine)), qemu-nbd \(ranges(qemu))",
                        sourceLocation: sourceLocation)
            }
        }
    }

    /// Several bitmaps (64 KiB default, 4 KiB, 1 MiB granularity, one added after the writes: empty)
    /// on a disk whose size is a multiple of neither the granularity nor the chunk.
    @Test func bitmapsAndDirtyRangesAreQEMUs() throws {
        let dir = try Integration.scratchDirectory("qcow2-bitmaps")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        let size = 100 * Self.mib + 3584
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "\(size)"])
        try Self.qemuIO(image, ["write -P 9 0 8M"])  // before every bitmap: in none
        #expect(try QCOW2Bitmaps.read(image).bitmaps.isEmpty)
        #expect(try QCOW2ImageBitmaps.list(image: image).isEmpty)
        try Self.add(image, "snapdump_base_64k")
        try Self.add(image, "g4k", granularity: 4096)
        try Self.add(image, "g1m", granularity: Self.mib)
        try Self.qemuIO(image, ["write -P 1 0 4k", "write -P 2 5M 4k", "write -z 13M 64k", "write -P 3 29294592 128k",
                                "write -P 4 \(size - 512) 512", "write -P 5 \(50 * Self.mib - 512) 1k"])
        try Self.add(image, "empty")
        let parsed = try QCOW2Bitmaps.read(image)
        #expect(parsed.size == size)
        #expect(parsed.bitmaps.map(\.name) == ["snapdump_base_64k", "g4k", "g1m", "empty"])
        #expect(parsed.bitmaps.map(\.granularity) == [65536, 4096, Self.mib, 65536])
        #expect(parsed.bitmaps.allSatisfy { $0.auto && !$0.inUse })
        try Self.expectSameAsQEMU(image, baseSizes: [96 * Self.mib, size + Self.mib])

        // Known answers, independent of QEMU's reader.
        let c64 = try parsed.changedChunks(bitmap: "snapdump_base_64k", baseSize: size, chunkSize: Self.chunk)
        #expect(Array(c64.indices) == [0, 1, 3, 6, 7, 12, 25], "\(Array(c64.indices))")
        #expect(c64.ranges(ofChunk: 1) == [AllocationRange(offset: 5 * Self.mib, length: 65536, kind: .data)])
        #expect(c64.ranges(ofChunk: 25) == [AllocationRange(offset: (size - 512) / 65536 * 65536, length: size - (size - 512) / 65536 * 65536, kind: .data)])
        #expect(c64.method == DirtyBitmap.method)
        let c4 = try parsed.changedChunks(bitmap: "g4k", baseSize: size, chunkSize: Self.chunk)
        #expect(c4.ranges(ofChunk: 1) == [AllocationRange(offset: 5 * Self.mib, length: 4096, kind: .data)])
        #expect(c4.ranges(ofChunk: 12) == [AllocationRange(offset: 50 * Self.mib - 4096, length: 8192, kind: .data)])
        let c1m = try parsed.changedChunks(bitmap: "g1m", baseSize: size, chunkSize: Self.chunk)
        #expect(c1m.ranges(ofChunk: 12) == [AllocationRange(offset: 49 * Self.mib, length: 2 * Self.mib, kind: .data)])
        #expect(try parsed.changedChunks(bitmap: "empty", baseSize: size, chunkSize: Self.chunk).indices.isEmpty)
        // The public entry point reads the file and answers the same.
        #expect(try DirtyBitmap.changedChunks(image: image, bitmap: "g4k", baseSize: size, chunkSize: Self.chunk) == c4)
        // A bitmap the image lacks: an error, never "unchanged".
        #expect(throws: StorageError.self) { try parsed.changedChunks(bitmap: "nope", baseSize: size, chunkSize: Self.chunk) }
    }

    /// 4 KiB clusters and 512-byte granules: one bitmap data cluster covers 16 MiB, so the
    /// 40 MiB disk has three table entries; a 16 MiB write dirties all of the second. Then the
    /// table entries QEMU reads without a data cluster: all ones and all zeros (offset 0).
    @Test func wholeClustersAndOffsetZeroEntries() throws {
        let dir = try Integration.scratchDirectory("qcow2-bitmaps-tables")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        let size = 40 * Self.mib + 1536
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "\(size)"])
        try Self.add(image, "fine", granularity: 512)
        try Self.qemuIO(image, ["write -P 5 16M 16M", "write -P 6 1M 512", "write -P 7 \(size - 1024) 1k"])
        let parsed = try QCOW2Bitmaps.read(image)
        let fine = try #require(parsed.bitmaps.first)
        #expect(fine.tableSize == 3 && parsed.clusterSize == 4096)
        try Self.expectSameAsQEMU(image)
        let c = try parsed.changedChunks(bitmap: "fine", baseSize: size, chunkSize: Self.chunk)
        #expect(Array(c.indices) == [0, 4, 5, 6, 7, 10], "\(Array(c.indices))")
        #expect(c.changedBytes.data == 512 + 16 * Self.mib + 1024)

        // Entry 1 "all ones" without a cluster, entry 0 "all zeros": QEMU reads both, so do we.
        let copy = try Self.copy(image, dir + "/patched.qcow2")
        try Self.patch(copy, at: fine.tableOffset + 8, 1, count: 8)
        try Self.patch(copy, at: fine.tableOffset, 0, count: 8)
        try Self.expectSameAsQEMU(copy)
        let p = try QCOW2Bitmaps.read(copy).changedChunks(bitmap: "fine", baseSize: size, chunkSize: Self.chunk)
        #expect(Array(p.indices) == [4, 5, 6, 7, 10], "\(Array(p.indices))")
        // Entry 2 (the last, partly past the disk's end) all ones: clipped to the disk.
        try Self.patch(copy, at: fine.tableOffset + 16, 1, count: 8)
        try Self.expectSameAsQEMU(copy)
        let q = try QCOW2Bitmaps.read(copy).changedChunks(bitmap: "fine", baseSize: size, chunkSize: Self.chunk)
        #expect(Array(q.indices) == [4, 5, 6, 7, 8, 9, 10] && q.changedBytes.data == size - 16 * Self.mib)
    }

    /// `in_use`: a qemu-nbd serving the image read-write (QEMU marks every loaded bitmap in_use in
    /// the file) killed -9 leaves the flag; and the flag set by hand in a copy. Both listed as
    /// inconsistent, as by qemu-img info; reading one is an error, as through qemu-nbd.
    @Test func inUseBitmapsAreInconsistent() throws {
        let dir = try Integration.scratchDirectory("qcow2-bitmaps-inuse")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"])
        try Self.add(image, "a")
        try Self.add(image, "b")
        try Self.qemuIO(image, ["write 1M 4k"])

        let byHand = try Self.copy(image, dir + "/by-hand.qcow2")
        let b = try #require(try QCOW2Bitmaps.read(byHand).bitmaps.last)
        try Self.patch(byHand, at: b.entryOffset + 12, 3, count: 4)  // in_use | auto
        #expect(try QCOW2ImageBitmaps.list(image: byHand) == [.init(name: "a", inconsistent: false), .init(name: "b", inconsistent: true)])
        try Self.expectSameAsQEMU(byHand)
        #expect(throws: StorageError.self) { try DirtyBitmap.changedChunks(image: byHand, bitmap: "b", baseSize: 16 * Self.mib, chunkSize: Self.chunk) }
        #expect(throws: (any Error).self) { try DirtyBitmap.changedChunksFromQemuNBD(image: byHand, bitmap: "b", baseSize: 16 * Self.mib, chunkSize: Self.chunk) }
        #expect(try DirtyBitmap.changedChunks(image: byHand, bitmap: "a", baseSize: 16 * Self.mib, chunkSize: Self.chunk).indices.count == 1)

        let sock = dir + "/nbd.sock", pidFile = dir + "/nbd.pid"
        try Command.runDaemonizing(["qemu-nbd", "--format=qcow2", "--socket=\(sock)", "--fork", "--pid-file=\(pidFile)", image])
        let pid = try #require(Int32(try FileSystem.readText(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGKILL)
        for _ in 0..<500 where !QemuNBDServer.hasExited(pid) { usleep(2000) }
        #expect(QemuNBDServer.hasExited(pid))
        #expect(try QCOW2ImageBitmaps.list(image: image) == [.init(name: "a", inconsistent: true), .init(name: "b", inconsistent: true)])
        try Self.expectSameAsQEMU(image)
        #expect(throws: StorageError.self) { try DirtyBitmap.changedChunks(image: image, bitmap: "a", baseSize: 16 * Self.mib, chunkSize: Self.chunk) }
    }

    /// Damaged copies of a good image: one clear error naming the file, never a crash, never an
    /// empty change set; features this reader leaves to QEMU go to qemu-img/qemu-nbd instead.
    @Test func corruptImagesAreErrorsAndUnsupportedOnesGoToQEMU() throws {
        let dir = try Integration.scratchDirectory("qcow2-bitmaps-corrupt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        let size = 64 * Self.mib
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "\(size)"])
        try Self.add(image, "a")
        try Self.add(image, "b", granularity: 4096)
        try Self.qemuIO(image, ["write 5M 4k", "write 40M 1M"])
        let good = try QCOW2Bitmaps.read(image)
        let a = good.bitmaps[0], b = good.bitmaps[1]
        let ext = try #require(good.extensionOffset), dirOffset = try #require(good.directoryOffset)
        let fileSize = try File.openForReading(image).size()
        let expected = try good.changedChunks(bitmap: "b", baseSize: size, chunkSize: Self.chunk)
        #expect(expected.indices.count == 2)
        let tableB = try QCOW2Bitmaps.be(Array(File.openForReading(image).readAll()[Int(b.tableOffset)..<Int(b.tableOffset) + 8]), 0, 8)

        func damaged(_ label: String, _ change: (String) throws -> Void) throws -> String {
            let copy = try Self.copy(image, dir + "/\(label).qcow2")
            try change(copy)
            return copy
        }
        /// The damage is an error naming the copy, from the listing or at the latest from reading `bitmap`.
        func expectError(_ copy: String, bitmap: String = "b", listFails: Bool, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
            if listFails {
                let e = #expect(throws: StorageError.self, sourceLocation: sourceLocation) { try QCOW2ImageBitmaps.list(image: copy) }
                #expect(e?.message.contains(copy) == true && e?.message.contains(what) == true, "\(e?.message ?? "")", sourceLocation: sourceLocation)
            }
            let e = #expect(throws: StorageError.self, sourceLocation: sourceLocation) {
                try DirtyBitmap.changedChunks(image: copy, bitmap: bitmap, baseSize: size, chunkSize: Self.chunk)
            }
            #expect(e?.message.contains(copy) == true && e?.message.contains(what) == true, "\(e?.message ?? "")", sourceLocation: sourceLocation)
        }

        expectError(try damaged("short", { try File.open($0, O_WRONLY).truncate(to: 50) }), listFails: true, "too short")
        // Cut after the header cluster: the directory and the tables are gone.
        expectError(try damaged("cut", { try File.open($0, O_WRONLY).truncate(to: 65536) }), listFails: true, "past the end")
        expectError(try damaged("dir-past-eof", { try Self.patch($0, at: ext + 8 + 16, (fileSize / 65536 + 16) * 65536, count: 8) }),
                    listFails: true, "bitmap directory at")
        expectError(try damaged("ext-length", { try Self.patch($0, at: ext + 4, 16, count: 4) }), listFails: true, "bitmaps extension length 16")
        expectError(try damaged("ext-huge", { try Self.patch($0, at: ext + 4, 0xFFFF_FFF0, count: 4) }), listFails: true, "runs past the first cluster")
        expectError(try damaged("count", { try Self.patch($0, at: ext + 8, 3, count: 4) }), listFails: true, "nb_bitmaps says 3")
        expectError(try damaged("name-size", { try Self.patch($0, at: a.entryOffset + 18, 0x7FFF, count: 2) }), listFails: true, "runs past the directory")
        expectError(try damaged("granularity", { try Self.patch($0, at: a.entryOffset + 17, 40, count: 1) }), listFails: true, "granularity_bits 40")
        // The table and the data are read only for the bitmap asked for: the listing stands (as QEMU's does).
        expectError(try damaged("table-past-eof", { try Self.patch($0, at: b.entryOffset, (fileSize / 65536 + 16) * 65536, count: 8) }),
                    listFails: false, "bitmap table at")
        expectError(try damaged("data-past-eof", { try Self.patch($0, at: b.tableOffset, (fileSize / 65536 + 16) * 65536, count: 8) }),
                    listFails: false, "past the end of the file")
        expectError(try damaged("data-unaligned", { try Self.patch($0, at: b.tableOffset, tableB + 512, count: 8) }),
                    listFails: false, "not cluster aligned")
        expectError(try damaged("table-reserved", { try Self.patch($0, at: b.tableOffset, tableB | 0x0100_0000_0000_0000, count: 8) }),
                    listFails: false, "reserved bits")
        expectError(try damaged("table-size", { try Self.patch($0, at: b.entryOffset + 8, 2, count: 4) }), listFails: false, "bitmap_table_size 2")
        // The other bitmap of such an image is still read (its own table is fine).
        let tableDamaged = try damaged("table-past-eof-2", { try Self.patch($0, at: b.entryOffset, (fileSize / 65536 + 16) * 65536, count: 8) })
        #expect(try DirtyBitmap.changedChunks(image: tableDamaged, bitmap: "a", baseSize: size, chunkSize: Self.chunk)
                == good.changedChunks(bitmap: "a", baseSize: size, chunkSize: Self.chunk))

        // Autoclear bit 0 clear: the extension is inconsistent; QEMU drops every bitmap, and so do we.
        let autoclear = try damaged("autoclear", { try Self.patch($0, at: 95, 0, count: 1) })
        #expect(try QCOW2ImageBitmaps.list(image: autoclear).isEmpty)
        try Self.expectSameAsQEMU(autoclear)
        #expect(throws: StorageError.self) { try DirtyBitmap.changedChunks(image: autoclear, bitmap: "b", baseSize: size, chunkSize: Self.chunk) }

        // The dirty bit: left to QEMU, whose answer for the bitmaps is the same as ours on the clean image.
        let dirty = try damaged("dirty", { try Self.patch($0, at: 79, 1, count: 1) })
        #expect(throws: QCOW2Bitmaps.Unsupported.self) { try QCOW2Bitmaps.read(dirty) }
        #expect(try QCOW2ImageBitmaps.list(image: dirty) == QCOW2ImageBitmaps.list(image: image))
        #expect(try DirtyBitmap.changedChunks(image: dirty, bitmap: "b", baseSize: size, chunkSize: Self.chunk) == expected)
        // An unknown incompatible bit: left to QEMU, which refuses the image.
        let unknown = try damaged("unknown-feature", { try Self.patch($0, at: 72, 0x80, count: 1) })
        #expect(throws: QCOW2Bitmaps.Unsupported.self) { try QCOW2Bitmaps.read(unknown) }
        #expect(throws: (any Error).self) { try QCOW2ImageBitmaps.list(image: unknown) }
        #expect(throws: (any Error).self) { try DirtyBitmap.changedChunks(image: unknown, bitmap: "b", baseSize: size, chunkSize: Self.chunk) }

        // Single bytes changed at random in the header, the directory, b's table and data: an answer
        // or an error, never a trap (a trap ends this test process). Deterministic (xorshift64, seed fixed).
        let fuzz = try Self.copy(image, dir + "/fuzz.qcow2")
        let bytes = try File.openForReading(image).readAll()
        let tableEntry = Int(tableB & QCOW2Bitmaps.tableOffsetMask)
        let regions = [0..<512, Int(dirOffset)..<Int(dirOffset) + 64, Int(b.tableOffset)..<Int(b.tableOffset) + 8, tableEntry..<tableEntry + 2048]
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        var answers = 0, errors = 0
        for _ in 0..<400 {
            let region = regions[Int(next() % UInt64(regions.count))]
            let at = region.lowerBound + Int(next() % UInt64(region.count))
            try Self.patch(fuzz, at: UInt64(at), next() & 0xFF, count: 1)
            // The parser itself (the public entry points would hand some of these to qemu-img and qemu-nbd).
            if let r = try? QCOW2Bitmaps.read(fuzz), (try? r.changedChunks(bitmap: "b", baseSize: size, chunkSize: Self.chunk)) != nil {
                answers += 1
            } else {
                errors += 1
            }
            try Self.patch(fuzz, at: UInt64(at), UInt64(bytes[at]), count: 1)
        }
        #expect(answers > 0 && errors > 0, "\(answers) answers, \(errors) errors")
    }
}
