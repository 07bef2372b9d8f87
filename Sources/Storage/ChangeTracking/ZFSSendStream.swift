import Foundation

/// Reads the changes of one object (a zvol's data object, or a raw file's
/// ZPL object on zfs-fuse) from an incremental `zfs send -i <base> <new>`
/// stream, fed in pieces as it arrives. The changed data is skipped, or with
/// `captureLimit` kept (up to that many bytes) so the changed ranges can be
/// served without reading the new snapshot (`ChangedData`).
///
/// Records are `dmu_replay_record_t`, 312 bytes, little-endian, some followed
/// by a payload (OpenZFS `zfs_ioctl.h`; also what zfs-fuse writes):
///
///     0  drr_type u32   4 drr_payloadlen u32   8 union:
///     BEGIN 0        magic u64 @8, …, payload drr_payloadlen
///     OBJECT 1       object @8, type u32 @16, bonustype u32 @20, bonuslen u32 @28; payload bonuslen rounded to 8
///     FREEOBJECTS 2  firstobj @8, numobjs @16
///     WRITE 3        object @8, type u32 @16, offset @24, length @32, compressiontype u8 @50,
///                    compressed_size @96; payload length (compressed_size when compressed)
///     FREE 4         object @8, offset @16, length @24 (UInt64.max: to the end)
///     END 5
///     WRITE_BYREF 6  object @8, offset @16, length @24
///     SPILL 7        object @8, length @16; payload length
///     WRITE_EMBEDDED 8  object @8, offset @16, length @24, psize u32 @52; payload psize rounded to 8
///     OBJECT_RANGE 9, REDACT 10 (object @8, offset @16, length @24)
///
/// WRITE, FREE (holes, discards, truncation) and their kin of the object are
/// the changed ranges; a FREE range reads as zeros in the new snapshot (the
/// records apply in stream order, as `zfs receive` applies them). A ZPL file recreated since the base (znode generation,
/// `zp_gen` at byte 64 of its bonus, newer than the base's `createtxg`) is a
/// different file: `.unknown`.
///
/// Whether a file name still names the same object (`nameChange`): a
/// directory's entries are ZAP blocks of its object (type
/// DMU_OT_DIRECTORY_CONTENTS), so an entry added, removed or renamed since
/// the base is a WRITE record of such an object in the stream. Only WRITEs of
/// plain files (DMU_OT_PLAIN_FILE_CONTENTS, 19) leave every name as it was; a
/// FREE cannot change a directory (a pool without hole birth times sends FREE
/// records for old holes of every object, the master node's too).
public struct ZFSSendStream {
    public static let recordSize = 312
    static let magic: UInt64 = 0x2F5bacbac
    static let plainFile: UInt32 = 19
    static let znode: UInt32 = 17

    let object: UInt64
    let baseTXG: UInt64?
    /// The object's changed ranges in stream order (`.zero`: freed).
    private var records: [AllocationRange] = []
    /// The object's file size in the new snapshot, from its znode (`zp_size`, byte 80 of the bonus);
    /// nil when its dnode is not in the stream (unchanged since the base, size included).
    public private(set) var newSize: UInt64?
    /// Why the stream does not show that every file name still names the object it named at the base; nil: it does.
    public private(set) var nameChange: String?
    private var header = [UInt8]()
    private var payloadLeft: UInt64 = 0
    private var bonus: [UInt8]? = nil
    private var failure: String?
    private var ended = false
    private var begun = false

    private let captureLimit: UInt64
    /// The WRITE payloads of the object, in stream order, while capturing.
    private var payloads: [(offset: UInt64, bytes: [UInt8])] = []
    private var capturing: [UInt8]? = nil
    private var capturedBytes: UInt64 = 0
    /// Why the changed data could not be kept (nil while it is, or when not asked to).
    public private(set) var notCaptured: String?

    /// `baseTXG`: the base snapshot's createtxg, to check a ZPL file's identity (nil: a zvol).
    /// `captureLimit`: keep the object's changed data up to this many bytes (0: skip it).
    public init(object: UInt64, baseTXG: UInt64?, captureLimit: UInt64 = 0) {
        self.object = object
        self.baseTXG = baseTXG
        self.captureLimit = captureLimit
        notCaptured = captureLimit == 0 ? "not asked to" : nil
        header.reserveCapacity(Self.recordSize)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        var i = 0
        while i < bytes.count && failure == nil {
            if payloadLeft > 0 {
                let n = Int(min(payloadLeft, UInt64(bytes.count - i)))
                if bonus != nil { bonus!.append(contentsOf: bytes[i..<i + n]) }
                if capturing != nil { capturing!.append(contentsOf: bytes[i..<i + n]) }
                payloadLeft -= UInt64(n)
                i += n
                if payloadLeft == 0 {
                    if let b = bonus { bonus = nil; checkBonus(b) }
                    if let c = capturing { capturing = nil; payloads[payloads.count - 1].bytes = c }
                }
                continue
            }
            if ended { failure = "data after the END record"; break }
            let n = min(Self.recordSize - header.count, bytes.count - i)
            header.append(contentsOf: bytes[i..<i + n])
            i += n
            if header.count == Self.recordSize {
                record(header)
                header.removeAll(keepingCapacity: true)
            }
        }
    }

    /// The result once the whole stream was fed: `empty` (the sizes known now) with the object's changes laid over it.
    public func finish(into empty: ChangedChunks) -> ChangeTracking {
        if let failure { return .unknown(reason: "zfs send stream: \(failure)") }
        guard ended, header.isEmpty, payloadLeft == 0 else { return .unknown(reason: "zfs send stream ended early") }
        var result = empty
        for r in records { result.insert(offset: r.offset, length: r.length, kind: r.kind) }
        return .changed(result)
    }

    /// The object's changed data as the stream carried it, for a volume of `size` bytes;
    /// nil when it was not kept (`notCaptured` says why).
    public func capturedData(size: UInt64) -> ChangedData? {
        guard notCaptured == nil, failure == nil, ended else { return nil }
        var data = ChangedData(object: object, size: size)
        var next = 0
        for r in records {
            if r.kind == .zero {
                data.insert(offset: r.offset, length: r.length, bytes: nil)
            } else {
                // Every .data record of the object is a WRITE whose payload was kept, in the same order.
                let p = payloads[next]
                next += 1
                data.insert(offset: p.offset, length: UInt64(p.bytes.count), bytes: p.bytes)
            }
        }
        return data
    }

    private var bonusType: UInt32 = 0

    private mutating func giveUpCapture(_ why: String) {
        guard notCaptured == nil else { return }
        notCaptured = why
        payloads = []
        capturing = nil
    }

    private mutating func record(_ r: [UInt8]) {
        func u64(_ o: Int) -> UInt64 { r.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) } }
        func u32(_ o: Int) -> UInt32 { r.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) } }
        let type = u32(0)
        if !begun && type != 0 { failure = "does not start with a BEGIN record"; return }
        switch type {
        case 0:
            guard u64(8) == Self.magic else {
                failure = u64(8) == Self.magic.byteSwapped ? "byte-swapped stream (written on another architecture)" : "bad magic"
                return
            }
            if begun { failure = "compound stream (more than one BEGIN)"; return }
            begun = true
            payloadLeft = UInt64(u32(4))
        case 1:
            let bonusLen = UInt64(u32(28))
            payloadLeft = (bonusLen + 7) / 8 * 8
            if u64(8) == object {
                bonusType = u32(20)
                if baseTXG != nil && u32(16) != Self.plainFile {
                    failure = "object \(object) is of type \(u32(16)), not a plain file"
                    return
                }
                if payloadLeft > 0 { bonus = [] } else { checkBonus([]) }
            }
        case 2:
            let first = u64(8), count = u64(16)
            if object >= first && object - first < count { failure = "object \(object) was freed (the file was removed or replaced)" }
        case 3:
            let compressed = r[50] != 0
            payloadLeft = compressed ? u64(96) : u64(32)
            if u64(8) == object {
                records.append(AllocationRange(offset: u64(24), length: u64(32), kind: .data))
                if notCaptured == nil {
                    if compressed {
                        giveUpCapture("a compressed WRITE record")
                    } else if capturedBytes + u64(32) > captureLimit {
                        giveUpCapture("more than \(captureLimit) bytes changed")
                    } else {
                        capturedBytes += u64(32)
                        payloads.append((u64(24), []))
                        capturing = []
                        capturing!.reserveCapacity(Int(u64(32)))
                    }
                }
            } else if u32(16) != Self.plainFile && nameChange == nil {
                nameChange = "object \(u64(8)) of type \(u32(16)) (a directory or other metadata) was written"
            }
        case 4:
            // Freed (a hole now, as after receive): zeros, unless a later WRITE of the stream fills it again.
            if u64(8) == object { records.append(AllocationRange(offset: u64(16), length: u64(24), kind: .zero)) }
        case 6, 10:
            if u64(8) == object {
                records.append(AllocationRange(offset: u64(16), length: u64(24), kind: .data))
                giveUpCapture("a WRITE_BYREF or REDACT record")
            }
            if nameChange == nil { nameChange = "a WRITE_BYREF or REDACT record (type \(type))" }
        case 5:
            ended = true
        case 7:
            payloadLeft = u64(16)
            if nameChange == nil { nameChange = "a SPILL record of object \(u64(8))" }
        case 8:
            if u64(8) == object {
                records.append(AllocationRange(offset: u64(16), length: u64(24), kind: .data))
                giveUpCapture("a WRITE_EMBEDDED record")
            }
            if nameChange == nil { nameChange = "a WRITE_EMBEDDED record of object \(u64(8))" }
            payloadLeft = (UInt64(u32(52)) + 7) / 8 * 8
        case 9:
            break
        default:
            failure = "unknown record type \(type)"
        }
    }

    /// The ZPL znode of the file (bonus type DMU_OT_ZNODE, 17): `zp_gen` at 64, `zp_size` at 80.
    private mutating func checkBonus(_ bonus: [UInt8]) {
        guard let baseTXG else { return }
        guard bonusType == Self.znode, bonus.count >= 88 else {
            failure = "object \(object) has bonus type \(bonusType), not a ZPL znode: cannot tell whether it is the base's file"
            return
        }
        let gen = bonus.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 64, as: UInt64.self)) }
        if gen > baseTXG { failure = "object \(object) was created in txg \(gen), after the base snapshot (txg \(baseTXG)): a new file" }
        newSize = bonus.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 80, as: UInt64.self)) }
    }
}
