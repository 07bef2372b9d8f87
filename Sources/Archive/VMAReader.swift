import Foundation
import SnapdumpSystem

/// Reads a VMA archive (plain, zstd or gzip, detected by magic) as a stream:
/// `init` parses and validates the header, `readClusters` walks the extents
/// and hands each cluster to a callback. Every format rule of
/// `vma-format.md` is enforced; errors name the archive, the offset in the
/// decompressed stream and the cause. One pass; not Sendable.
public final class VMAReader {
    /// One cluster as stored: valid only during the callback.
    public struct Cluster {
        public var deviceID: UInt8
        public var cluster: UInt32
        /// Bit j set: 4 KiB block j is stored; clear: it is zero.
        public var mask: UInt16
        /// popcount(mask) × 4096 bytes, the stored blocks in bit order.
        public var blocks: UnsafeRawBufferPointer
        /// Bytes of this cluster inside the device (65536 except for the last cluster).
        public var validBytes: Int

        /// Byte offset of the cluster on its device.
        public var deviceOffset: UInt64 { UInt64(cluster) * UInt64(VMAFormat.clusterSize) }

        /// Writes the stored blocks at their device offsets in `file`, runs of
        /// adjacent blocks in one call; zero blocks are skipped, so they stay
        /// holes in a fresh file. Returns the bytes written.
        public func writeStoredBlocks(to file: File) throws -> UInt64 {
            try writeStoredBlocks { try file.write($0, at: $1) }
        }

        /// The same through `write(bytes, deviceOffset)`, for targets that are not files (an RBD image).
        public func writeStoredBlocks(_ write: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws -> UInt64 {
            var written: UInt64 = 0
            var j = 0, src = 0
            while j < VMAFormat.blocksPerCluster {
                guard mask & (1 << j) != 0 else { j += 1; continue }
                var k = j
                while k < VMAFormat.blocksPerCluster && mask & (1 << k) != 0 { k += 1 }
                let len = min((k - j) * VMAFormat.blockSize, validBytes - j * VMAFormat.blockSize)
                if len > 0 {
                    try write(UnsafeRawBufferPointer(rebasing: blocks[src..<src + len]),
                              deviceOffset + UInt64(j * VMAFormat.blockSize))
                    written += UInt64(len)
                }
                src += (k - j) * VMAFormat.blockSize
                j = k
            }
            return written
        }

        /// Writes the cluster's 64 KiB (zeros for clear mask bits) into `buffer`.
        public func expand(into buffer: UnsafeMutableRawBufferPointer) {
            precondition(buffer.count >= VMAFormat.clusterSize)
            var src = 0
            for j in 0..<VMAFormat.blocksPerCluster {
                let d = buffer.baseAddress! + j * VMAFormat.blockSize
                if mask & (1 << j) != 0 {
                    d.copyMemory(from: blocks.baseAddress! + src, byteCount: VMAFormat.blockSize)
                    src += VMAFormat.blockSize
                } else {
                    d.initializeMemory(as: UInt8.self, repeating: 0, count: VMAFormat.blockSize)
                }
            }
        }
    }

    /// Consecutive clusters of one device that store no block (mask 0, all
    /// zero), delivered as one run so that the cost of a restore follows the
    /// data, not the disk size.
    public struct ZeroRun: Sendable {
        public var deviceID: UInt8
        public var firstCluster: UInt32
        public var count: UInt32
        /// Bytes of these clusters inside the device.
        public var validBytes: UInt64
    }

    public struct Summary: Sendable {
        public var extents: UInt64 = 0
        public var clusters: UInt64 = 0
        public var storedBlocks: UInt64 = 0
        /// Length of the decompressed stream.
        public var streamBytes: UInt64 = 0
    }

    public let path: String
    public let header: VMAHeader
    public let headerSize: Int
    public let compression: Compression.Kind

    private let input: DecompressingReader
    private var consumed = false

    /// Opens `path`, detects its compression and reads the header.
    public convenience init(path: String) throws(ArchiveError) {
        try self.init(input: DecompressingReader(path: path))
    }

    public init(input: DecompressingReader) throws(ArchiveError) {
        self.input = input
        path = input.path
        compression = input.compression
        let fixed = try input.readExactly(count: VMAFormat.fixedHeaderSize)
        guard fixed[0..<4].elementsEqual(VMAFormat.magic) else {
            throw ArchiveError(.notAnArchive, path: input.path, offset: 0, "not a VMA archive (bad magic)")
        }
        let size = fixed.withUnsafeBytes { Int($0.loadBE(at: VMAFormat.offHeaderSize, as: UInt32.self)) }
        guard size >= VMAFormat.fixedHeaderSize && size <= VMAFormat.maxHeaderSize else {
            throw ArchiveError(.format, path: input.path, offset: UInt64(VMAFormat.offHeaderSize), "bad header_size \(size)")
        }
        var all = fixed
        if size > fixed.count {
            all += try input.readExactly(count: size - fixed.count)
        }
        header = try VMAHeader.decode(all, path: input.path)
        headerSize = size
    }

    public func config(named name: String) -> [UInt8]? { header.config(named: name) }

    /// The parsed `snapdump.json`, nil when the archive has none (not written by snapdump).
    public func snapdumpMetadata() throws(ArchiveError) -> SnapdumpMetadata? {
        guard let blob = header.config(named: SnapdumpMetadata.blobName) else { return nil }
        do {
            return try SnapdumpMetadata.decode(blob)
        } catch {
            throw ArchiveError(.format, path: path, "malformed \(SnapdumpMetadata.blobName): \(error)")
        }
    }

    /// Reads all extents, calling `body` for every cluster in stream order.
    /// Checks extent magic, uuid, MD5 and block count, that every cluster of
    /// every device appears exactly once, and that no stored block lies past
    /// its device's end. Can be called once.
    ///
    /// With `zeroRuns`, clusters that store no block go there instead, runs
    /// of consecutive ones of a device as one call, each run before the
    /// cluster that follows it in the stream.
    @discardableResult
    public func readClusters(_ body: (Cluster) throws -> Void, zeroRuns: ((ZeroRun) throws -> Void)? = nil) throws -> Summary {
        precondition(!consumed, "readClusters can be called once")
        consumed = true
        var summary = Summary()

        struct Dev {
            var device: VMADevice
            var seen: ClusterSet
        }
        var devs: [Dev?] = Array(repeating: nil, count: 256)
        for d in header.devices { devs[Int(d.id)] = Dev(device: d, seen: ClusterSet(count: d.clusterCount)) }

        let ehead = UnsafeMutableRawBufferPointer.allocate(byteCount: VMAFormat.extentHeaderSize, alignment: 64)
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: VMAFormat.maxExtentSize - VMAFormat.extentHeaderSize, alignment: 4096)
        defer {
            ehead.deallocate()
            data.deallocate()
        }
        let md5 = EVPHasher.md5()
        var md5Out = (UInt64(0), UInt64(0))
        let uuid = withUnsafeBytes(of: header.uuid.uuid) { Array($0) }

        var run: ZeroRun?
        func flushRun() throws {
            if let r = run, let zeroRuns {
                run = nil
                try zeroRuns(r)
            }
        }

        while true {
            let start = input.offset
            let n = try input.read(into: ehead)
            if n == 0 { break }
            if n < VMAFormat.extentHeaderSize { throw ArchiveError.truncated(path, at: start + UInt64(n)) }
            func fail(_ code: ArchiveError.Code, _ message: String) -> ArchiveError {
                ArchiveError(code, path: path, offset: start, message)
            }
            let h = UnsafeRawBufferPointer(ehead)
            guard h[0..<4].elementsEqual(VMAFormat.extentMagic) else { throw fail(.format, "bad extent magic") }
            guard h[VMAFormat.offExtentUUID..<VMAFormat.offExtentUUID + 16].elementsEqual(uuid) else {
                throw fail(.format, "extent uuid does not match the header's")
            }
            // MD5 of the header with its md5 field zeroed.
            var stored = (UInt64(0), UInt64(0))
            withUnsafeMutableBytes(of: &stored) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: h[VMAFormat.offExtentMD5..<VMAFormat.offExtentMD5 + 16])) }
            ehead.baseAddress!.advanced(by: VMAFormat.offExtentMD5).initializeMemory(as: UInt8.self, repeating: 0, count: 16)
            md5.update(h)
            withUnsafeMutableBytes(of: &md5Out) { md5.finish(into: $0) }
            guard stored == md5Out else { throw fail(.checksum, "bad extent MD5") }

            let blockCount = Int(h.loadBE(at: VMAFormat.offExtentBlockCount, as: UInt16.self))
            var masks = 0
            for i in 0..<VMAFormat.clustersPerExtent {
                let info = VMABlockInfo(rawValue: h.loadBE(at: VMAFormat.offBlockInfo + 8 * i, as: UInt64.self))
                if info.deviceID == 0 {
                    guard info.mask == 0 else { throw fail(.format, "unused block info entry \(i) has mask \(info.mask)") }
                    continue
                }
                masks += info.mask.nonzeroBitCount
            }
            guard masks == blockCount else {
                throw fail(.format, "extent block_count \(blockCount) does not match its masks (\(masks) blocks)")
            }
            let dataBytes = blockCount * VMAFormat.blockSize
            // Straight from the decoder's buffer when it holds the whole extent (no copy), else copied.
            let payload: UnsafeRawBufferPointer
            if let borrowed = try input.borrow(count: dataBytes) {
                payload = borrowed
            } else {
                let got = try input.read(into: UnsafeMutableRawBufferPointer(rebasing: data[0..<dataBytes]))
                if got < dataBytes { throw ArchiveError.truncated(path, at: input.offset) }
                payload = UnsafeRawBufferPointer(rebasing: data[0..<dataBytes])
            }

            var pos = 0
            for i in 0..<VMAFormat.clustersPerExtent {
                let info = VMABlockInfo(rawValue: h.loadBE(at: VMAFormat.offBlockInfo + 8 * i, as: UInt64.self))
                guard info.deviceID != 0 else { continue }
                let di = Int(info.deviceID)
                guard let dev = devs[di] else {
                    throw fail(.format, "cluster \(info.cluster) of unknown device id \(info.deviceID)")
                }
                func name() -> String { "device \(info.deviceID) (\(dev.device.name))" }
                guard UInt64(info.cluster) < dev.seen.count else {
                    throw fail(.format, "cluster \(info.cluster) beyond the end of \(name())")
                }
                let valid = VMAFormat.validBlockMask(deviceSize: dev.device.size, cluster: UInt64(info.cluster))
                guard info.mask & ~valid == 0 else {
                    throw fail(.format, "cluster \(info.cluster) of \(name()) stores a block past the device end")
                }
                guard dev.seen.insert(info.cluster) else { throw fail(.duplicateCluster, "duplicated cluster \(info.cluster) of \(name())") }
                let bytes = info.mask.nonzeroBitCount * VMAFormat.blockSize
                let validBytes = Int(min(UInt64(VMAFormat.clusterSize), dev.device.size - UInt64(info.cluster) * UInt64(VMAFormat.clusterSize)))
                summary.clusters += 1
                if info.mask == 0 && zeroRuns != nil {
                    if let r = run, r.deviceID == info.deviceID, UInt64(r.firstCluster) + UInt64(r.count) == UInt64(info.cluster) {
                        run!.count += 1
                        run!.validBytes += UInt64(validBytes)
                    } else {
                        try flushRun()
                        run = ZeroRun(deviceID: info.deviceID, firstCluster: info.cluster, count: 1, validBytes: UInt64(validBytes))
                    }
                    continue
                }
                try flushRun()
                try body(Cluster(deviceID: info.deviceID, cluster: info.cluster, mask: info.mask,
                                 blocks: UnsafeRawBufferPointer(rebasing: payload[pos..<pos + bytes]), validBytes: validBytes))
                pos += bytes
            }
            summary.storedBlocks += UInt64(blockCount)
            summary.extents += 1
        }
        try flushRun()
        summary.streamBytes = input.offset
        for case let d? in devs {
            guard let missing = d.seen.firstMissing() else { continue }
            throw ArchiveError(.missingCluster, path: path, offset: input.offset,
                               "missing cluster \(missing) of device \(d.device.id) (\(d.device.name))")
        }
        return summary
    }

    public struct Verification: Sendable {
        public var summary: Summary
        /// Per device id, the content digest computed from the archive (empty
        /// when nothing needed it: no `snapdump.json` and no targets).
        public var digests: [UInt8: SHA256Digest]
        /// Whether `snapdump.json` was present and all its digests matched.
        public var metadataChecked: Bool
        /// Chunks whose clusters came too far out of order to hash on the fly,
        /// hashed after the stream from the targets or a spill file.
        public var deferredChunks: Int
        /// Bytes written through `writers` (zero blocks are not written).
        public var bytesWritten: UInt64
    }

    /// `snapdump.json`, checked against the header: an entry for every
    /// device, with the header's size and snapdump's chunk size. Callers that
    /// write (restore) check this before allocating anything.
    public func checkedMetadata() throws(ArchiveError) -> SnapdumpMetadata? {
        guard let metadata = try snapdumpMetadata() else { return nil }
        for d in header.devices {
            guard let m = metadata.device(named: d.name) else {
                throw ArchiveError(.format, path: path, "\(SnapdumpMetadata.blobName) has no entry for device \(d.name)")
            }
            guard m.size == d.size, m.chunkSize == DeviceDigest.chunkSize else {
                throw ArchiveError(.format, path: path, "\(SnapdumpMetadata.blobName) entry for \(d.name) has size \(m.size) / chunk size \(m.chunkSize), header says \(d.size) / \(DeviceDigest.chunkSize)")
            }
        }
        return metadata
    }

    /// Reads the whole archive, computes each device's content digest and
    /// compares it with `snapdump.json` when present (a mismatch throws
    /// `.digestMismatch`). `body`, if given, also sees every cluster — or,
    /// with `zeroRuns`, every cluster that stores a block, the clusters of
    /// zeros going to `zeroRuns` as runs (`ZeroRun`): a restore into a
    /// target that starts zeroed has nothing to do for them, so its cost
    /// follows the data, not the disk size.
    ///
    /// `writers[id]`: where device `id` is written (restore, extract): each
    /// chunk's stored blocks once the chunk is complete and hashed, runs of
    /// adjacent blocks in one write from a 4 KiB-aligned buffer, on
    /// background threads (`DigestAssembler`); zero blocks are not written.
    /// `targets[id]`: a readable file that holds every cluster of device
    /// `id` at the end (written through `writers[id]`, or by `body`). Chunks whose clusters come too far out of order are
    /// then hashed from it after the stream, so what is checked is what was
    /// written; devices without a target use an unnamed spill file in
    /// `spillDirectory` (default `$TMPDIR` or /tmp). Without `snapdump.json`
    /// and targets nothing is hashed.
    @discardableResult
    public func verify(targets: [UInt8: File] = [:], writers: [UInt8: any DeviceWriter] = [:], spillDirectory: String? = nil,
                       progress: ReadProgress? = nil,
                       _ body: ((Cluster) throws -> Void)? = nil, zeroRuns: ((ZeroRun) throws -> Void)? = nil) throws -> Verification {
        let metadata = try checkedMetadata()
        let assembler = metadata != nil || !targets.isEmpty || !writers.isEmpty
            ? DigestAssembler(devices: header.devices, targets: targets, writers: writers, spillDirectory: spillDirectory) : nil
        let sizes = Dictionary(uniqueKeysWithValues: header.devices.map { ($0.id, $0.size) })
        let summary = try readClusters { c in
            try body?(c)
            progress?.add(c)
            try assembler?.add(device: c.deviceID, cluster: c.cluster, mask: c.mask, blocks: c.blocks)
        } zeroRuns: { run in
            // Counted first: a caller pacing itself by `progress` (bwlimit) sees the run.
            progress?.add(run)
            if let zeroRuns {
                try zeroRuns(run)
            } else if let body {
                // A caller that wants every cluster gets the run cluster by cluster.
                let size = sizes[run.deviceID]!
                for c in run.firstCluster..<(run.firstCluster + run.count) {
                    let offset = UInt64(c) * UInt64(VMAFormat.clusterSize)
                    try body(Cluster(deviceID: run.deviceID, cluster: c, mask: 0, blocks: UnsafeRawBufferPointer(start: nil, count: 0),
                                     validBytes: Int(min(UInt64(VMAFormat.clusterSize), size - offset))))
                }
            }
            try assembler?.addZeroRun(device: run.deviceID, firstCluster: run.firstCluster, count: run.count)
        }
        progress?.finish()
        let digests = try assembler?.finish() ?? [:]
        if let metadata {
            for d in header.devices {
                let m = metadata.device(named: d.name)!
                guard let digest = digests[d.id], m.digest == digest else {
                    throw ArchiveError(.digestMismatch, path: path,
                                       "content digest of device \(d.id) (\(d.name)) is \(digests[d.id]?.hex ?? "incomplete"), \(SnapdumpMetadata.blobName) says \(m.sha256)")
                }
            }
        }
        return Verification(summary: summary, digests: digests, metadataChecked: metadata != nil,
                            deferredChunks: assembler?.deferredChunks ?? 0, bytesWritten: assembler?.bytesWritten ?? 0)
    }
}
