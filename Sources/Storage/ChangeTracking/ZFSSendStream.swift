import Foundation

/// Reads the changes of one object (a zvol's data object, or a raw file's
/// ZPL object on zfs-fuse) from an incremental `zfs send -i <base> <new>`
/// stream, fed in pieces as it arrives (the stream carries the changed data,
/// which is skipped, never held).
///
/// Records are `dmu_replay_record_t`, 312 bytes, little-endian, some followed
/// by a payload (OpenZFS `zfs_ioctl.h`; also what zfs-fuse writes):
///
///     0  drr_type u32   4 drr_payloadlen u32   8 union:
///     BEGIN 0        magic u64 @8, …, payload drr_payloadlen
///     OBJECT 1       object @8, bonustype u32 @20, bonuslen u32 @28; payload bonuslen rounded to 8
///     FREEOBJECTS 2  firstobj @8, numobjs @16
///     WRITE 3        object @8, offset @24, length @32, compressiontype u8 @50,
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
public struct ZFSSendStream {
    public static let recordSize = 312
    static let magic: UInt64 = 0x2F5bacbac

    let object: UInt64
    let baseTXG: UInt64?
    var result: ChangedChunks
    private var header = [UInt8]()
    private var payloadLeft: UInt64 = 0
    private var captured: [UInt8]? = nil
    private var failure: String?
    private var ended = false
    private var begun = false

    /// `baseTXG`: the base snapshot's createtxg, to check a ZPL file's identity (nil: a zvol).
    public init(object: UInt64, baseTXG: UInt64?, result: ChangedChunks) {
        self.object = object
        self.baseTXG = baseTXG
        self.result = result
        header.reserveCapacity(Self.recordSize)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        var i = 0
        while i < bytes.count && failure == nil {
            if payloadLeft > 0 {
                let n = Int(min(payloadLeft, UInt64(bytes.count - i)))
                if captured != nil { captured!.append(contentsOf: bytes[i..<i + n]) }
                payloadLeft -= UInt64(n)
                i += n
                if payloadLeft == 0, let bonus = captured {
                    captured = nil
                    checkBonus(bonus)
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

    /// The result once the whole stream was fed.
    public func finish() -> ChangeTracking {
        if let failure { return .unknown(reason: "zfs send stream: \(failure)") }
        guard ended, header.isEmpty, payloadLeft == 0 else { return .unknown(reason: "zfs send stream ended early") }
        return .changed(result)
    }

    private var bonusType: UInt32 = 0

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
                if payloadLeft > 0 { captured = [] } else { checkBonus([]) }
            }
        case 2:
            let first = u64(8), count = u64(16)
            if object >= first && object - first < count { failure = "object \(object) was freed (the file was removed or replaced)" }
        case 3:
            if u64(8) == object { result.insert(offset: u64(24), length: u64(32)) }
            payloadLeft = r[50] != 0 ? u64(96) : u64(32)
        case 4:
            // Freed (a hole now, as after receive): zeros, unless a later WRITE of the stream fills it again.
            if u64(8) == object { result.insert(offset: u64(16), length: u64(24), kind: .zero) }
        case 6, 10:
            if u64(8) == object { result.insert(offset: u64(16), length: u64(24)) }
        case 5:
            ended = true
        case 7:
            payloadLeft = u64(16)
        case 8:
            if u64(8) == object { result.insert(offset: u64(16), length: u64(24)) }
            payloadLeft = (UInt64(u32(52)) + 7) / 8 * 8
        case 9:
            break
        default:
            failure = "unknown record type \(type)"
        }
    }

    /// The ZPL znode of the file (bonus type DMU_OT_ZNODE, 17): `zp_gen` at 64.
    private mutating func checkBonus(_ bonus: [UInt8]) {
        guard let baseTXG else { return }
        guard bonusType == 17, bonus.count >= 72 else {
            failure = "object \(object) has bonus type \(bonusType), not a ZPL znode: cannot tell whether it is the base's file"
            return
        }
        let gen = bonus.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 64, as: UInt64.self)) }
        if gen > baseTXG { failure = "object \(object) was created in txg \(gen), after the base snapshot (txg \(baseTXG)): a new file" }
    }
}
