import Foundation

/// Constants and byte layout of Proxmox's VMA format
/// (`/work/shared/reference/vma-format.md`). Do not modify: these values are
/// what Proxmox tools read and write.
public enum VMAFormat {
    /// `"VMA\0"`.
    public static let magic: [UInt8] = [0x56, 0x4D, 0x41, 0x00]
    /// `"VMAE"`.
    public static let extentMagic: [UInt8] = [0x56, 0x4D, 0x41, 0x45]
    public static let version: UInt32 = 1

    public static let blockSize = 4096
    public static let clusterSize = 65536
    public static let blocksPerCluster = 16
    public static let extentHeaderSize = 512
    /// Block-info slots in an extent header (the spec's prose says 64; the code has 59).
    public static let clustersPerExtent = 59
    public static let maxExtentSize = extentHeaderSize + clustersPerExtent * clusterSize
    public static let maxConfigs = 256
    public static let deviceIDs: ClosedRange<UInt8> = 1...254
    /// The fixed part of the header; the blob buffer starts here.
    public static let fixedHeaderSize = 12288
    public static let blobBufferOffset: UInt32 = 12288
    /// Largest header_size, as the C writer's header buffer allows.
    public static let maxHeaderSize = 512 * 1024
    /// Largest blob: its length is a u16.
    public static let maxBlobSize = 65535
    /// Largest device: cluster numbers are u32, so 2^32 clusters of 64 KiB (256 TiB).
    public static let maxDeviceSize: UInt64 = 1 << 48
    /// Device sizes are whole 512-byte sectors: QEMU (and so Proxmox's
    /// writer) sees every disk that way, and Proxmox's reader refuses to
    /// write a partial sector ("write beyond end").
    public static let sectorSize: UInt64 = 512
    /// Longest device or config name snapdump accepts in a header.
    public static let maxNameLength = 127

    // Header field offsets.
    static let offVersion = 4, offUUID = 8, offCtime = 24, offMD5 = 32
    static let offBlobOffset = 48, offBlobSize = 52, offHeaderSize = 56
    static let offConfigNames = 2044, offConfigData = 3068, offDevInfo = 4096
    static let devInfoSize = 32

    // Extent header field offsets.
    static let offExtentBlockCount = 6, offExtentUUID = 8, offExtentMD5 = 24, offBlockInfo = 40

    /// Clusters of a device of `size` bytes: ceil(size / 65536) (no overflow for any size).
    public static func clusterCount(deviceSize size: UInt64) -> UInt64 {
        size / UInt64(clusterSize) + (size % UInt64(clusterSize) == 0 ? 0 : 1)
    }

    /// The size a device of `size` bytes has in an archive: whole sectors,
    /// the tail zero-padded, as QEMU presents a raw file of that size.
    /// Saturates instead of overflowing (the writer refuses such sizes anyway).
    public static func paddedDeviceSize(_ size: UInt64) -> UInt64 {
        let tail = size % sectorSize
        guard tail != 0 else { return size }
        let (padded, overflow) = (size - tail).addingReportingOverflow(sectorSize)
        return overflow ? UInt64.max - (UInt64.max % sectorSize) : padded
    }

    /// A device name Proxmox writes: `drive-scsi0`, `drive-efidisk0`,
    /// `vmstate`, … — ASCII letters, digits and `_ . + -`, not starting with
    /// a punctuation character, at most 127 bytes. Names become file names
    /// (`vma extract`) and lines of `vma list`: no `/`, spaces or control characters.
    public static func isValidDeviceName(_ name: String) -> Bool { isPlainName(name) }

    /// A config blob name as Proxmox writes them (`qemu-server.conf`,
    /// `qemu-server.fw`) or snapdump (`snapdump.json`): the same rule as device names.
    public static func isValidConfigName(_ name: String) -> Bool { isPlainName(name) }

    private static func isPlainName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard let first = u.first, u.count <= maxNameLength else { return false }
        func alnum(_ c: UInt8) -> Bool { (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) }
        guard alnum(first) else { return false }
        return u.allSatisfy { alnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") }
    }

    /// The mask of blocks of cluster `cluster` that lie (at least partly)
    /// before the device end: 0xFFFF except for the last, partial cluster.
    public static func validBlockMask(deviceSize size: UInt64, cluster: UInt64) -> UInt16 {
        let start = cluster * UInt64(clusterSize)
        guard start < size else { return 0 }
        let bytes = min(UInt64(clusterSize), size - start)
        let blocks = Int((bytes + UInt64(blockSize) - 1) / UInt64(blockSize))
        return blocks >= 16 ? 0xFFFF : UInt16((1 << blocks) - 1)
    }
}

/// One `blockinfo` entry of an extent header: `mask << 48 | dev_id << 32 | cluster`.
public struct VMABlockInfo: Hashable, Sendable {
    public var mask: UInt16
    public var deviceID: UInt8
    public var cluster: UInt32

    public init(mask: UInt16, deviceID: UInt8, cluster: UInt32) {
        self.mask = mask
        self.deviceID = deviceID
        self.cluster = cluster
    }

    public init(rawValue v: UInt64) {
        mask = UInt16(truncatingIfNeeded: v >> 48)
        deviceID = UInt8(truncatingIfNeeded: v >> 32)
        cluster = UInt32(truncatingIfNeeded: v)
    }

    public var rawValue: UInt64 {
        UInt64(mask) << 48 | UInt64(deviceID) << 32 | UInt64(cluster)
    }
}

/// A device (disk) recorded in the header.
public struct VMADevice: Hashable, Sendable {
    /// 1 … 254.
    public var id: UInt8
    /// `drive-scsi0`, `drive-virtio1`, …
    public var name: String
    /// Size in bytes (> 0).
    public var size: UInt64

    public init(id: UInt8, name: String, size: UInt64) {
        self.id = id
        self.name = name
        self.size = size
    }

    public var clusterCount: UInt64 { VMAFormat.clusterCount(deviceSize: size) }
}

/// A named config blob (`qemu-server.conf`, `qemu-server.fw`, `snapdump.json`).
public struct VMAConfigBlob: Hashable, Sendable {
    public var name: String
    public var data: [UInt8]

    public init(name: String, data: [UInt8]) {
        self.name = name
        self.data = data
    }

    public init(name: String, text: String) {
        self.init(name: name, data: Array(text.utf8))
    }
}

/// The archive header: everything before the first extent.
public struct VMAHeader: Hashable, Sendable {
    public var uuid: UUID
    /// Seconds since the epoch.
    public var ctime: Int64
    /// In header order.
    public var configs: [VMAConfigBlob]
    /// In id order.
    public var devices: [VMADevice]

    public init(uuid: UUID, ctime: Int64, configs: [VMAConfigBlob], devices: [VMADevice]) {
        self.uuid = uuid
        self.ctime = ctime
        self.configs = configs
        self.devices = devices.sorted { $0.id < $1.id }
    }

    public func config(named name: String) -> [UInt8]? {
        configs.first { $0.name == name }?.data
    }

    public func device(id: UInt8) -> VMADevice? {
        devices.first { $0.id == id }
    }

    /// Checks what `encode` needs; `reason` for the first problem or nil.
    func problem() -> String? {
        if configs.count > VMAFormat.maxConfigs { return "too many config blobs (\(configs.count) > 256)" }
        if devices.isEmpty { return "no devices" }
        var seen = Set<UInt8>()
        for d in devices {
            if !VMAFormat.deviceIDs.contains(d.id) { return "device id \(d.id) of '\(d.name)' outside 1…254" }
            if !seen.insert(d.id).inserted { return "device id \(d.id) used twice" }
            if d.size == 0 { return "device '\(d.name)' has size 0" }
            if d.size > VMAFormat.maxDeviceSize { return "device '\(d.name)' too large (\(d.size) bytes, VMA holds at most 2^48)" }
            if !VMAFormat.isValidDeviceName(d.name) { return "bad device name '\(d.name)'" }
        }
        for c in configs {
            if !VMAFormat.isValidConfigName(c.name) { return "bad config name '\(c.name)'" }
            if c.data.count > VMAFormat.maxBlobSize { return "config '\(c.name)' larger than 65535 bytes" }
        }
        return nil
    }

    /// The header bytes, `header_size` long, MD5 filled in. Blobs are laid
    /// out as the C writer does: for each config its name then its data,
    /// then the device names in id order; byte 0 of the buffer is unused.
    public func encode() throws(HeaderEncodingError) -> [UInt8] {
        if let p = problem() { throw HeaderEncodingError(message: p) }
        var blobs: [UInt8] = [0]
        func add(_ data: [UInt8]) -> UInt32 {
            let pos = UInt32(blobs.count)
            blobs.append(UInt8(data.count & 0xFF))
            blobs.append(UInt8(data.count >> 8))
            blobs.append(contentsOf: data)
            return pos
        }
        var namePtrs: [UInt32] = [], dataPtrs: [UInt32] = []
        for c in configs {
            namePtrs.append(add(Array(c.name.utf8) + [0]))
            dataPtrs.append(add(c.data))
        }
        var devPtrs: [UInt32] = []
        for d in devices { devPtrs.append(add(Array(d.name.utf8) + [0])) }

        let used = VMAFormat.fixedHeaderSize + blobs.count
        let headerSize = (used + 511) / 512 * 512
        if headerSize > VMAFormat.maxHeaderSize {
            throw HeaderEncodingError(message: "header of \(headerSize) bytes exceeds 512 KiB")
        }
        var out = [UInt8](repeating: 0, count: headerSize)
        out.withUnsafeMutableBytes { b in
            for i in 0..<4 { b[i] = VMAFormat.magic[i] }
            b.storeBE(VMAFormat.version, at: VMAFormat.offVersion)
            withUnsafeBytes(of: uuid.uuid) { u in
                for i in 0..<16 { b[VMAFormat.offUUID + i] = u[i] }
            }
            b.storeBE(ctime, at: VMAFormat.offCtime)
            b.storeBE(VMAFormat.blobBufferOffset, at: VMAFormat.offBlobOffset)
            b.storeBE(UInt32(blobs.count), at: VMAFormat.offBlobSize)
            b.storeBE(UInt32(headerSize), at: VMAFormat.offHeaderSize)
            for i in configs.indices {
                b.storeBE(namePtrs[i], at: VMAFormat.offConfigNames + 4 * i)
                b.storeBE(dataPtrs[i], at: VMAFormat.offConfigData + 4 * i)
            }
            for (i, d) in devices.enumerated() {
                let o = VMAFormat.offDevInfo + VMAFormat.devInfoSize * Int(d.id)
                b.storeBE(devPtrs[i], at: o)
                b.storeBE(d.size, at: o + 8)
            }
            blobs.withUnsafeBytes { src in
                UnsafeMutableRawBufferPointer(rebasing: b[VMAFormat.fixedHeaderSize...]).copyMemory(from: src)
            }
            let md5 = MD5.digest(UnsafeRawBufferPointer(b))
            for i in 0..<16 { b[VMAFormat.offMD5 + i] = md5[i] }
        }
        return out
    }

    /// Parses and validates the fixed part and blob buffer of a header.
    /// `bytes` is the whole header (`header_size` bytes). Errors name `path`.
    public static func decode(_ bytes: [UInt8], path: String) throws(ArchiveError) -> VMAHeader {
        func fail(_ msg: String, _ offset: Int, _ code: ArchiveError.Code = .format) -> ArchiveError {
            ArchiveError(code, path: path, offset: UInt64(offset), msg)
        }
        guard bytes.count >= VMAFormat.fixedHeaderSize else { throw ArchiveError.truncated(path, at: UInt64(bytes.count)) }
        return try withBytes(bytes) { (b) throws(ArchiveError) -> VMAHeader in
            guard b[0] == 0x56, b[1] == 0x4D, b[2] == 0x41, b[3] == 0 else {
                throw fail("not a VMA archive (bad magic)", 0, .notAnArchive)
            }
            let version = b.loadBE(at: VMAFormat.offVersion, as: UInt32.self)
            guard version == VMAFormat.version else {
                throw fail("unsupported VMA version \(version)", VMAFormat.offVersion, .notAnArchive)
            }
            let headerSize = Int(b.loadBE(at: VMAFormat.offHeaderSize, as: UInt32.self))
            guard headerSize == bytes.count else {
                throw fail("header_size \(headerSize) does not match \(bytes.count) bytes read", VMAFormat.offHeaderSize)
            }
            // MD5 over the header with the md5 field zeroed.
            var copy = bytes
            for i in 0..<16 { copy[VMAFormat.offMD5 + i] = 0 }
            let md5 = copy.withUnsafeBytes { MD5.digest($0) }
            guard md5.elementsEqual(b[VMAFormat.offMD5..<VMAFormat.offMD5 + 16]) else {
                throw fail("bad header MD5", VMAFormat.offMD5, .checksum)
            }
            let blobOffset = Int(b.loadBE(at: VMAFormat.offBlobOffset, as: UInt32.self))
            let blobSize = Int(b.loadBE(at: VMAFormat.offBlobSize, as: UInt32.self))
            guard blobOffset >= VMAFormat.fixedHeaderSize, blobOffset <= headerSize,
                  blobSize <= headerSize - blobOffset else {
                throw fail("blob buffer (offset \(blobOffset), size \(blobSize)) outside header of \(headerSize) bytes", VMAFormat.offBlobOffset)
            }
            func blob(_ ptr: UInt32, field: Int) throws(ArchiveError) -> UnsafeRawBufferPointer {
                let p = Int(ptr)
                guard p >= 1, p + 2 <= blobSize else { throw fail("blob pointer \(p) outside blob buffer", field) }
                let len = Int(b.loadLE(at: blobOffset + p, as: UInt16.self))
                guard p + 2 + len <= blobSize else { throw fail("blob at \(p) of \(len) bytes overruns blob buffer", blobOffset + p) }
                return UnsafeRawBufferPointer(rebasing: b[(blobOffset + p + 2)..<(blobOffset + p + 2 + len)])
            }
            func string(_ ptr: UInt32, field: Int) throws(ArchiveError) -> String {
                let s = try blob(ptr, field: field)
                guard let last = s.last, last == 0 else { throw fail("string blob at \(ptr) lacks its NUL", blobOffset + Int(ptr)) }
                return String(decoding: s.dropLast(), as: UTF8.self)
            }
            // A refused name is shown escaped: it must not print a line of its own.
            func shown(_ name: String) -> String { String(reflecting: name) }
            var configs: [VMAConfigBlob] = []
            for i in 0..<VMAFormat.maxConfigs {
                let nf = VMAFormat.offConfigNames + 4 * i, df = VMAFormat.offConfigData + 4 * i
                let np = b.loadBE(at: nf, as: UInt32.self)
                let dp = b.loadBE(at: df, as: UInt32.self)
                if np == 0 && dp == 0 { continue }
                guard np != 0, dp != 0 else { throw fail("config \(i) has a name or data pointer but not both", np == 0 ? nf : df) }
                let name = try string(np, field: nf)
                guard VMAFormat.isValidConfigName(name) else {
                    throw fail("config \(i) has a name Proxmox never writes: \(shown(name)) (letters, digits, _ . + - only)", nf)
                }
                guard !configs.contains(where: { $0.name == name }) else { throw fail("config name '\(name)' used twice", nf) }
                configs.append(VMAConfigBlob(name: name, data: Array(try blob(dp, field: df))))
            }
            var devices: [VMADevice] = []
            for id in 0...255 {
                let o = VMAFormat.offDevInfo + VMAFormat.devInfoSize * id
                let np = b.loadBE(at: o, as: UInt32.self)
                let size = b.loadBE(at: o + 8, as: UInt64.self)
                if np == 0 && size == 0 { continue }
                guard VMAFormat.deviceIDs.contains(UInt8(id)) else { throw fail("device slot \(id) is reserved but used", o) }
                guard np != 0 else { throw fail("device \(id) has a size but no name", o) }
                guard size != 0 else { throw fail("device \(id) has size 0", o + 8) }
                guard size <= VMAFormat.maxDeviceSize else {
                    throw fail("device \(id) claims \(size) bytes, more than the 2^48 bytes (256 TiB) a VMA archive can hold", o + 8)
                }
                let name = try string(np, field: o)
                guard VMAFormat.isValidDeviceName(name) else {
                    throw fail("device \(id) has a name Proxmox never writes: \(shown(name)) (letters, digits, _ . + - only)", o)
                }
                guard !devices.contains(where: { $0.name == name }) else { throw fail("device name '\(name)' used twice", o) }
                devices.append(VMADevice(id: UInt8(id), name: name, size: size))
            }
            guard !devices.isEmpty else { throw fail("archive has no devices", VMAFormat.offDevInfo) }
            var uuidBytes = UUID().uuid
            withUnsafeMutableBytes(of: &uuidBytes) { u in
                for i in 0..<16 { u[i] = b[VMAFormat.offUUID + i] }
            }
            return VMAHeader(uuid: UUID(uuid: uuidBytes),
                             ctime: b.loadBE(at: VMAFormat.offCtime, as: Int64.self),
                             configs: configs, devices: devices)
        }
    }
}

/// `VMAHeader.encode` was given something VMA cannot hold.
public struct HeaderEncodingError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// Encodes and checks 512-byte extent headers in place.
enum VMAExtentHeader {
    /// Fills the first 512 bytes of `extent` from `infos` (59 raw entries,
    /// unused ones 0) and `blockCount`, including the MD5.
    static func encode(into extent: UnsafeMutableRawBufferPointer, uuid: UnsafeRawBufferPointer,
                       infos: UnsafeBufferPointer<UInt64>, blockCount: Int, md5: EVPHasher) {
        for i in 0..<4 { extent[i] = VMAFormat.extentMagic[i] }
        extent.storeBE(UInt16(0), at: 4)
        extent.storeBE(UInt16(blockCount), at: VMAFormat.offExtentBlockCount)
        for i in 0..<16 {
            extent[VMAFormat.offExtentUUID + i] = uuid[i]
            extent[VMAFormat.offExtentMD5 + i] = 0
        }
        for i in 0..<VMAFormat.clustersPerExtent {
            extent.storeBE(infos[i], at: VMAFormat.offBlockInfo + 8 * i)
        }
        md5.update(UnsafeRawBufferPointer(rebasing: extent[0..<VMAFormat.extentHeaderSize]))
        md5.finish(into: UnsafeMutableRawBufferPointer(rebasing: extent[VMAFormat.offExtentMD5..<VMAFormat.offExtentMD5 + 16]))
    }
}

extension VMAFormat {
    /// Packs one cluster's `valid` bytes (less than a cluster only at a device's end) into an
    /// extent's data at `dst + pos`: every 4 KiB block that is not all zero is copied, a short
    /// last block padded with zeros. Returns the cluster's block mask (bit j: block j stored)
    /// and the position after the last stored block. One packer for the sequential writer and
    /// the segment encoder, so both write the same bytes.
    @inline(__always)
    static func packCluster(_ src: UnsafeRawPointer, valid: Int, into dst: UnsafeMutableRawPointer, at pos: Int) -> (mask: UInt16, end: Int) {
        var mask: UInt16 = 0
        var pos = pos
        var offset = 0, j = 0
        while offset < valid {
            let n = min(blockSize, valid - offset)
            if !ZeroCheck.isZero(src + offset, count: n) {
                (dst + pos).copyMemory(from: src + offset, byteCount: n)
                if n < blockSize {
                    (dst + pos + n).initializeMemory(as: UInt8.self, repeating: 0, count: blockSize - n)
                }
                pos += blockSize
                mask |= 1 << j
            }
            offset += blockSize
            j += 1
        }
        return (mask, pos)
    }
}
