import Foundation
import SnapdumpSystem
import Storage
import Testing

/// The readers of storage change reports, on inputs a storage would give
/// (btrfs send streams: BtrfsSendStreamTests).
@Suite("Change tracking readers")
struct ChangeTrackingParserTests {
    static let mib: UInt64 = 1 << 20
    static func empty(size: UInt64 = 40 << 20, baseSize: UInt64? = nil) -> ChangedChunks {
        ChangedChunks(chunkSize: 4 * mib, baseSize: baseSize ?? size, size: size, method: "test")
    }

    @Test func sizeChangesMarkTheOldLastChunkAndAllAfter() {
        #expect(Self.empty(size: 40 << 20, baseSize: 30 << 20).indices == IndexSet(integersIn: 7..<10))
        #expect(Self.empty(size: 30 << 20, baseSize: 40 << 20).indices == IndexSet(integer: 7))
        var c = Self.empty(size: 10 << 20)
        c.insert(offset: 8 << 20, length: UInt64.max)
        c.insert(offset: 4 * Self.mib - 1, length: 2)
        #expect(c.indices == IndexSet([0, 1, 2]))
        c.insert(offset: 20 << 20, length: 4096)
        #expect(c.indices == IndexSet([0, 1, 2]), "past the end: clipped away")
    }

    static func record(_ type: UInt32, _ fields: [(Int, UInt64)], bytes: [(Int, UInt8)] = []) -> [UInt8] {
        var r = [UInt8](repeating: 0, count: ZFSSendStream.recordSize)
        r.withUnsafeMutableBytes { b in
            b.storeBytes(of: type.littleEndian, toByteOffset: 0, as: UInt32.self)
            for (o, v) in fields { b.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt64.self) }
            for (o, v) in bytes { b[o] = v }
        }
        return r
    }

    static func begin() -> [UInt8] { record(0, [(8, 0x2F5bacbac)]) }
    /// An OBJECT record with a ZPL znode: a plain file (type 19) unless `type` says otherwise.
    static func object(_ obj: UInt64, gen: UInt64, size: UInt64 = 40 << 20, type: UInt32 = 19) -> [UInt8] {
        var r = record(1, [(8, obj)])
        r.withUnsafeMutableBytes { b in
            b.storeBytes(of: type.littleEndian, toByteOffset: 16, as: UInt32.self)
            b.storeBytes(of: UInt32(17).littleEndian, toByteOffset: 20, as: UInt32.self)
            b.storeBytes(of: UInt32(264).littleEndian, toByteOffset: 28, as: UInt32.self)
        }
        var bonus = [UInt8](repeating: 0, count: 264)
        bonus.withUnsafeMutableBytes {
            $0.storeBytes(of: gen.littleEndian, toByteOffset: 64, as: UInt64.self)
            $0.storeBytes(of: size.littleEndian, toByteOffset: 80, as: UInt64.self)
        }
        return r + bonus
    }
    /// A WRITE of `len` bytes of `fill` (or of the bytes `data`), of an object of type `type` (19: a plain file; 20: a directory).
    static func write(_ obj: UInt64, _ off: UInt64, _ len: UInt64, fill: UInt8 = 0xab, type: UInt32 = 19, data: [UInt8]? = nil) -> [UInt8] {
        var r = record(3, [(8, obj), (24, off), (32, len)])
        r.withUnsafeMutableBytes { $0.storeBytes(of: type.littleEndian, toByteOffset: 16, as: UInt32.self) }
        return r + (data ?? [UInt8](repeating: fill, count: Int(len)))
    }
    static func free(_ obj: UInt64, _ off: UInt64, _ len: UInt64) -> [UInt8] { record(4, [(8, obj), (16, off), (24, len)]) }
    static func end() -> [UInt8] { record(5, []) }

    static func parse(_ stream: [UInt8], piece: Int, object: UInt64 = 5, baseTXG: UInt64? = 40) -> ChangeTracking {
        feed(stream, piece: piece, object: object, baseTXG: baseTXG).finish(into: empty())
    }

    static func feed(_ stream: [UInt8], piece: Int, object: UInt64 = 5, baseTXG: UInt64? = 40, captureLimit: UInt64 = 0) -> ZFSSendStream {
        var p = ZFSSendStream(object: object, baseTXG: baseTXG, captureLimit: captureLimit)
        var i = 0
        while i < stream.count {
            let n = min(piece, stream.count - i)
            stream[i..<i + n].withUnsafeBytes { p.feed($0) }
            i += n
        }
        return p
    }

    /// The changed data kept from the stream is the file's content at the new snapshot: WRITE payloads and
    /// FREE zeros applied in stream order (a write into a freed range wins), other objects' data not kept,
    /// its size from the file's znode; a directory written, or data the stream cannot carry whole, says so.
    @Test(arguments: [1, 313, 100_000])
    func zfsStreamKeepsTheFilesChangedData(piece: Int) throws {
        let a = (0..<131_072).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stream = Self.begin() + Self.object(5, gen: 37, size: 40 << 20) + Self.free(5, 40 << 20, UInt64.max)
            + Self.write(5, 1 << 20, 131_072, data: a) + Self.write(6, 0, 131_072, fill: 0xee)
            + Self.free(5, 12 << 20, 256 << 10) + Self.write(5, (12 << 20) + 4096, 8192, fill: 0x11)
            + Self.write(5, (1 << 20) + 65536, 4096, fill: 0x22) + Self.end()
        let p = Self.feed(stream, piece: piece, captureLimit: 1 << 20)
        #expect(p.nameChange == nil && p.newSize == 40 << 20 && p.notCaptured == nil)
        let data = try #require(p.capturedData(size: 40 << 20))
        var expected = [UInt8](repeating: 0x77, count: 40 << 20)   // 0x77: not carried
        func put(_ at: Int, _ bytes: [UInt8]) { expected.replaceSubrange(at..<at + bytes.count, with: bytes) }
        put(1 << 20, a)
        put(12 << 20, [UInt8](repeating: 0, count: 256 << 10))
        put((12 << 20) + 4096, [UInt8](repeating: 0x11, count: 8192))
        put((1 << 20) + 65536, [UInt8](repeating: 0x22, count: 4096))
        let source = ChangedDataSource(data: data, name: "test", fallback: {
            throw StorageError(.backend, "fallback opened")
        })
        for (offset, length) in [(1 << 20, 131_072), (12 << 20, 256 << 10), ((1 << 20) + 65000, 1000)] {
            var buf = [UInt8](repeating: 0x55, count: length)
            var done = 0
            while done < length {
                let n = try buf.withUnsafeMutableBytes { try source.read(at: UInt64(offset + done), into: UnsafeMutableRawBufferPointer(rebasing: $0[done...])) }
                #expect(n > 0)
                done += n
            }
            #expect(buf == Array(expected[offset..<offset + length]), "at \(offset)")
        }
        #expect(data.heldBytes == 131_072 + 8192 + 4096 - 4096, "the overwritten 4 KiB of the first write is a slice, not counted twice")
        // A range the stream did not carry goes to the snapshot.
        var buf = [UInt8](repeating: 0, count: 4096)
        #expect(throws: StorageError.self) { _ = try buf.withUnsafeMutableBytes { try source.read(at: 0, into: $0) } }

        let renamed = Self.begin() + Self.object(5, gen: 37) + Self.write(3, 0, 512, type: 20) + Self.write(5, 0, 4096) + Self.end()
        #expect(Self.feed(renamed, piece: piece).nameChange?.contains("object 3 of type 20") == true)
        let big = Self.begin() + Self.write(5, 0, 131_072) + Self.write(5, 131_072, 131_072) + Self.end()
        let capped = Self.feed(big, piece: piece, captureLimit: 200_000)
        #expect(capped.capturedData(size: 40 << 20) == nil && capped.notCaptured?.contains("more than") == true)
        #expect(capped.finish(into: Self.empty()).changedChunks?.indices == IndexSet([0]), "the changes are reported all the same")
        var compressed = Self.record(3, [(8, 5), (24, 0), (32, 131_072), (96, 100)])
        compressed[50] = 2
        compressed[16] = 19
        let c = Self.feed(Self.begin() + compressed + [UInt8](repeating: 1, count: 100) + Self.end(), piece: piece, captureLimit: 1 << 20)
        #expect(c.capturedData(size: 40 << 20) == nil && c.notCaptured?.contains("compressed") == true)
        let directory = Self.begin() + Self.object(5, gen: 3, type: 20) + Self.end()
        #expect(Self.parse(directory, piece: piece).reason?.contains("not a plain file") == true)
    }

    @Test(arguments: [1, 7, 312, 100_000])
    func zfsStreamWritesAndFreesOfTheObject(piece: Int) {
        let stream = Self.begin() + Self.object(5, gen: 37) + Self.free(5, 40 << 20, UInt64.max)
            + Self.write(5, 1_179_648, 131_072) + Self.write(6, 0, 131_072) + Self.free(5, 12 << 20, 256 << 10)
            + Self.free(4, 0, UInt64.max) + Self.end()
        #expect(Self.parse(stream, piece: piece).changedChunks?.indices == IndexSet([0, 3]))
    }

    @Test func zfsStreamNewFileFreedObjectOrCutStreamIsUnknown() {
        let recreated = Self.begin() + Self.object(5, gen: 41) + Self.write(5, 0, 4096) + Self.end()
        #expect(Self.parse(recreated, piece: 4096).reason?.contains("after the base snapshot") == true)
        #expect(Self.parse(recreated, piece: 4096, baseTXG: nil).changedChunks != nil, "a zvol: no znode to check")
        let freed = Self.begin() + Self.record(2, [(8, 3), (16, 4)]) + Self.end()
        #expect(Self.parse(freed, piece: 4096).reason?.contains("freed") == true)
        let cut = Self.begin() + Self.write(5, 0, 131_072)
        #expect(Self.parse(Array(cut.dropLast(10)), piece: 4096).reason?.contains("ended early") == true)
        #expect(Self.parse(Self.end(), piece: 4096).reason?.contains("BEGIN") == true)
        let unknown = Self.begin() + Self.record(42, []) + Self.end()
        #expect(Self.parse(unknown, piece: 4096).reason?.contains("unknown record type 42") == true)
    }

    /// Random overlapping inserts, in any order, against a byte model: a later insert wins, segments
    /// stay sorted and disjoint, zeros where freed, nothing where nothing was inserted, clipped to the size.
    @Test(arguments: [1 as UInt64, 2, 3, 4, 5])
    func changedDataOverlaysLikeTheStream(seed: UInt64) {
        let size = 65_536
        var model = [Int](repeating: -1, count: size)   // -1: not carried
        var data = ChangedData(object: 5, size: UInt64(size))
        var rng = seed &* 0x9E37_79B9_7F4A_7C15
        func next(_ n: Int) -> Int {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            return Int((rng >> 33) % UInt64(n))
        }
        for step in 0..<200 {
            let offset = next(size + 1024), length = 1 + next(9000)
            let zero = next(4) == 0
            let bytes = zero ? nil : (0..<length).map { UInt8(truncatingIfNeeded: step &+ $0) }
            data.insert(offset: UInt64(offset), length: UInt64(length), bytes: bytes)
            for i in offset..<max(offset, min(size, offset + length)) { model[i] = zero ? 0 : Int(UInt8(truncatingIfNeeded: step &+ (i - offset))) }
        }
        var last: UInt64 = 0
        for seg in data.segments {
            #expect(seg.offset >= last && seg.length > 0 && seg.offset + seg.length <= UInt64(size))
            last = seg.offset + seg.length
        }
        var mismatches = 0
        for i in 0..<size {
            let (seg, _) = data.lookup(UInt64(i))
            let got: Int = seg.map { s in s.bytes.map { Int($0[$0.startIndex + i - Int(s.offset)]) } ?? 0 } ?? -1
            if got != model[i] { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }

    static func extent(_ l: UInt64, _ p: UInt64, _ n: UInt64, _ f: UInt32 = 0) -> File.Extent {
        File.Extent(logical: l * mib, physical: p * mib, length: n * mib, flags: f)
    }

    @Test func extentMapsCompareByPhysicalAddress() {
        // 40 MiB: base one extent at 100 MiB; new the same but 9..10 MiB moved (a COW write),
        // 17..18 MiB a hole in the new file (punched), 30..40 the same data split in two extents.
        let base = [Self.extent(0, 100, 40)]
        let new = [Self.extent(0, 100, 9), Self.extent(9, 500, 1), Self.extent(10, 110, 7),
                   Self.extent(18, 118, 12), Self.extent(30, 130, 5), Self.extent(35, 135, 5, File.Extent.last)]
        var c = Self.empty()
        ExtentComparison.compare(base: base, new: new, into: &c)
        #expect(c.indices == IndexSet([2, 4]))
    }

    @Test func untrustedFlagsAndEncodedExtentsCountAsChanged() {
        var c = Self.empty()
        ExtentComparison.compare(base: [Self.extent(0, 100, 8)], new: [Self.extent(0, 100, 4), Self.extent(4, 104, 4, File.Extent.delalloc)], into: &c)
        #expect(c.indices == IndexSet([1]))
        c = Self.empty()
        // Compressed extents: btrfs reports the compressed extent's start, so only identical extents are equal.
        let enc = File.Extent.encoded
        ExtentComparison.compare(base: [Self.extent(0, 100, 4, enc), Self.extent(4, 200, 4, enc)],
                                 new: [Self.extent(0, 100, 4, enc), Self.extent(4, 200, 2, enc), Self.extent(6, 200, 2, enc)], into: &c)
        #expect(c.indices == IndexSet([1]))
        c = Self.empty()
        ExtentComparison.compare(base: [Self.extent(0, 100, 4)], new: [Self.extent(0, 100, 4, File.Extent.unwritten)], into: &c)
        #expect(c.indices == IndexSet([0]))
        c = Self.empty()
        ExtentComparison.compare(base: [], new: [], into: &c)
        #expect(c.indices.isEmpty, "holes in both: equal")
    }

    @Test func thinDeltaEverythingButSameDiffers() {
        let xml = """
        <superblock uuid="" time="2" transaction="4" flags="0" version="2" data_block_size="128" nr_data_blocks="3072">
          <diff left="1" right="3">
            <same begin="0" length="64"/>
            <different begin="64" length="1"/>
            <same begin="65" length="200"/>
            <right_only begin="300" length="2"/>
            <left_only begin="639" length="1"/>
          </diff>
        </superblock>
        """
        // 64 KiB blocks: 64 → 4 MiB (chunk 1); 300 → 18.75 MiB (chunk 4); 639 → 39.9 MiB (chunk 9).
        var c = Self.empty()
        #expect(ThinDelta.changes(xml: xml, into: &c).changedChunks?.indices == IndexSet([1, 4, 9]))
        #expect(ThinDelta.changes(xml: "", into: &c).reason?.contains("no <diff>") == true)
        #expect(ThinDelta.changes(xml: "<superblock data_block_size=\"128\">\n<diff>\n<weird begin=\"1\"/>", into: &c).changedChunks == nil)
    }

    static func r(_ o: UInt64, _ n: UInt64, _ k: AllocationKind = .data) -> AllocationRange { AllocationRange(offset: o, length: n, kind: k) }

    @Test func rangesPerChunkOverlayInOrderAndSplitAtChunkEdges() {
        var c = Self.empty()
        c.insert(offset: 4096, length: 8192)
        c.insert(offset: 12288, length: 4096)                       // adjacent: merged
        c.insert(offset: 65536, length: 65536, kind: .zero)         // freed
        c.insert(offset: 98304, length: 4096)                       // then written into
        c.insert(offset: 4 * Self.mib - 4096, length: 8192)         // across a chunk edge
        #expect(c.ranges(ofChunk: 0) == [Self.r(4096, 12288), Self.r(65536, 32768, .zero), Self.r(98304, 4096),
                                         Self.r(102400, 28672, .zero), Self.r(4 * Self.mib - 4096, 4096)])
        #expect(c.ranges(ofChunk: 1) == [Self.r(4 * Self.mib, 4096)])
        #expect(c.ranges(ofChunk: 2).isEmpty)
        // A write over everything of chunk 0 replaces all its pieces.
        c.insert(offset: 0, length: 4 * Self.mib)
        #expect(c.ranges(ofChunk: 0) == [Self.r(0, 4 * Self.mib)])
        #expect(c.changedBytes.data == 4 * Self.mib + 4096 && c.changedBytes.zero == 0)
        // A grown volume: the old last chunk (its last byte on) and all after it are data.
        let g = Self.empty(size: 10 << 20, baseSize: 6 << 20)
        #expect(g.ranges(ofChunk: 1) == [Self.r(6 * Self.mib - 1, 2 * Self.mib + 1)] && g.ranges(ofChunk: 2) == [Self.r(8 * Self.mib, 2 * Self.mib)])
    }

    @Test func storagesReportZeroRanges() {
        // zfs: FREE is zeros unless a later WRITE fills it again.
        let stream = Self.begin() + Self.object(5, gen: 37) + Self.free(5, 0, 1 << 20) + Self.write(5, 131_072, 131_072) + Self.end()
        #expect(Self.parse(stream, piece: 4096).changedChunks?.ranges(ofChunk: 0)
                == [Self.r(0, 131_072, .zero), Self.r(131_072, 131_072), Self.r(262_144, 786_432, .zero)])
        // FIEMAP: a hole or an unwritten extent in the new clone is zeros, a moved extent data.
        var c = Self.empty()
        ExtentComparison.compare(base: [Self.extent(0, 100, 40)],
                                 new: [Self.extent(0, 100, 1), Self.extent(1, 300, 1), Self.extent(3, 103, 1, File.Extent.unwritten), Self.extent(4, 104, 36)], into: &c)
        #expect(c.ranges(ofChunk: 0) == [Self.r(Self.mib, Self.mib), Self.r(2 * Self.mib, 2 * Self.mib, .zero)])
        // thin_delta: left_only blocks are unmapped in the new snapshot.
        var t = Self.empty()
        let xml = "<superblock data_block_size=\"128\">\n<diff left=\"1\" right=\"2\">\n<left_only begin=\"1\" length=\"1\"/>\n<different begin=\"2\" length=\"1\"/>\n</diff>\n</superblock>"
        #expect(ThinDelta.changes(xml: xml, into: &t).changedChunks?.ranges(ofChunk: 0) == [Self.r(65536, 65536, .zero), Self.r(131_072, 65536)])
    }
}
