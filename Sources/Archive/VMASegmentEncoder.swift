import CZstd

/// A piece of the VMA stream — whole extents for the clusters given — built
/// and compressed as one independent zstd frame on the caller's thread: the
/// unit a backup's workers make in parallel, each with its own encoder, while
/// `VMAWriter.append` puts the pieces into the archive in stream order.
///
/// Why (BENCHMARKS.md, "Issue 15"): with the stream built on one thread and
/// compressed by libzstd's workers, each 16 MiB frame crossed threads several
/// times and its end (`ZSTD_e_end`) waited for the frame's last job, leaving a
/// core idle; the SHA-256 of each chunk was one more hand-over. Here one
/// thread hashes a chunk, builds its extents and compresses the frame while
/// the data is fresh, and no frame waits for another.
///
/// A segment ends its last extent early (an extent of fewer than 59
/// clusters, as the C writer's last one): a valid VMA stream, read by
/// Proxmox's `vma` and by `VMAReader` unchanged. One per thread.
public final class VMASegmentEncoder: @unchecked Sendable {
    // @unchecked: used by one thread at a time (handed to its worker before use).
    /// Clusters holding data in one segment: 16 MiB, the frame size of the
    /// sequential path (the ratio loss against one frame is 0.06 %).
    public static let maxDataClusters = 256
    /// All clusters of one segment, zero clusters included (1 GiB of device:
    /// a thin disk's holes cost one frame per GiB, not one per 16 MiB).
    public static let maxClusters = 16384

    /// What a sealed segment holds; `VMAWriter.append` takes it with the frame.
    public struct Segment: Sendable {
        /// Runs of consecutive clusters, in the order added.
        public internal(set) var runs: [(device: UInt8, first: UInt32, count: UInt32)] = []
        public internal(set) var clusters: UInt64 = 0
        public internal(set) var storedBlocks: UInt64 = 0
        public internal(set) var zeroBytes: UInt64 = 0
        public internal(set) var extents: UInt64 = 0
        /// Uncompressed bytes of the segment's extents.
        public internal(set) var streamBytes: UInt64 = 0
        /// Bytes of the compressed frame.
        public internal(set) var frameBytes = 0
    }

    /// Room for the compressed frame of any segment.
    public static let frameCapacity: Int = ZSTD_compressBound(streamCapacity)
    static let streamCapacity = maxDataClusters * VMAFormat.clusterSize
        + ((maxClusters + VMAFormat.clustersPerExtent - 1) / VMAFormat.clustersPerExtent + 1) * VMAFormat.extentHeaderSize

    private let path: String
    private let uuid: [UInt8]
    private let sizes: [UInt64?]
    private let cctx: OpaquePointer
    private let stream: UnsafeMutableRawBufferPointer
    private let infos: UnsafeMutableBufferPointer<UInt64>
    private let md5 = EVPHasher.md5()
    private let sha = EVPHasher.sha256()
    private var entryCount = 0
    /// Start of the pending extent in `stream`, and the end of its data.
    private var extentStart = 0
    private var pos = VMAFormat.extentHeaderSize
    private var dataClusters = 0
    private var segment = Segment()

    init(path: String, uuid: [UInt8], devices: [VMADevice], level: Int32) throws(ArchiveError) {
        guard let cctx = ZSTD_createCCtx() else { throw ArchiveError(.compression, path: path, "ZSTD_createCCtx failed") }
        for (p, v, what) in [(ZSTD_c_compressionLevel, level, "compression level \(level)"), (ZSTD_c_checksumFlag, 1, "checksum flag")] {
            let r = ZSTD_CCtx_setParameter(cctx, p, v)
            if ZSTD_isError(r) != 0 {
                ZSTD_freeCCtx(cctx)
                throw ArchiveError(.compression, path: path, "zstd: \(what): \(String(cString: ZSTD_getErrorName(r)))")
            }
        }
        self.cctx = cctx
        self.path = path
        self.uuid = uuid
        var sizes = [UInt64?](repeating: nil, count: 256)
        for d in devices { sizes[Int(d.id)] = d.size }
        self.sizes = sizes
        // Pages are touched as extents are built: a segment of holes costs its headers only.
        stream = .allocate(byteCount: Self.streamCapacity, alignment: 4096)
        infos = .allocate(capacity: VMAFormat.clustersPerExtent)
        infos.initialize(repeating: 0)
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        stream.deallocate()
        infos.deallocate()
    }

    private func size(of device: UInt8, _ cluster: UInt32) throws(ArchiveError) -> UInt64 {
        guard let size = sizes[Int(device)] else { throw ArchiveError(.invalidArgument, path: path, "no device with id \(device)") }
        guard UInt64(cluster) < VMAFormat.clusterCount(deviceSize: size) else {
            throw ArchiveError(.invalidArgument, path: path, "cluster \(cluster) beyond the end of device \(device)")
        }
        guard segment.clusters < UInt64(Self.maxClusters) else {
            throw ArchiveError(.invalidArgument, path: path, "segment full: more than \(Self.maxClusters) clusters")
        }
        return size
    }

    /// Adds the clusters of one chunk of `device` starting at cluster
    /// `first` (`data`: the chunk's bytes up to the device's end, at most 4
    /// MiB) and returns the chunk's SHA-256 (`DeviceDigest`'s, zero shortcut
    /// included). Each cluster is hashed right before it is copied into its
    /// extent, while it is in the CPU cache.
    public func addChunk(device: UInt8, firstCluster first: UInt32, data: UnsafeRawBufferPointer) throws(ArchiveError) -> SHA256Digest {
        precondition(data.count <= DeviceDigest.chunkSize)
        let full = data.count == DeviceDigest.chunkSize && ZeroCheck.isZero(data.baseAddress!, count: data.count)
        var off = 0, k: UInt32 = 0
        while off < data.count {
            let piece = UnsafeRawBufferPointer(rebasing: data[off..<min(off + VMAFormat.clusterSize, data.count)])
            if !full { sha.update(piece) }
            try addCluster(device: device, cluster: first + k, data: piece)
            off += VMAFormat.clusterSize
            k += 1
        }
        if full { return DeviceDigest.zeroChunkDigest }
        return sha.finishSHA256()
    }

    /// Adds cluster `cluster` of `device` (as `VMAWriter.addCluster`: all-zero 4 KiB blocks are left out).
    public func addCluster(device: UInt8, cluster: UInt32, data: UnsafeRawBufferPointer) throws(ArchiveError) {
        let size = try size(of: device, cluster)
        guard dataClusters < Self.maxDataClusters else {
            throw ArchiveError(.invalidArgument, path: path, "segment full: more than \(Self.maxDataClusters) clusters of data")
        }
        let start = UInt64(cluster) * UInt64(VMAFormat.clusterSize)
        let valid = Int(min(UInt64(VMAFormat.clusterSize), size - start))
        precondition(data.count >= valid, "cluster data of \(data.count) bytes, need \(valid)")
        let before = pos
        let (mask, end) = VMAFormat.packCluster(data.baseAddress!, valid: valid, into: stream.baseAddress!, at: pos)
        pos = end
        let stored = (pos - before) / VMAFormat.blockSize
        dataClusters += 1
        segment.storedBlocks += UInt64(stored)
        segment.zeroBytes += UInt64(valid - min(valid, stored * VMAFormat.blockSize))
        append(VMABlockInfo(mask: mask, deviceID: device, cluster: cluster))
    }

    /// Adds an all-zero cluster (a hole that was never read): a mask-0 entry.
    public func addZeroCluster(device: UInt8, cluster: UInt32) throws(ArchiveError) {
        let size = try size(of: device, cluster)
        segment.zeroBytes += min(UInt64(VMAFormat.clusterSize), size - UInt64(cluster) * UInt64(VMAFormat.clusterSize))
        append(VMABlockInfo(mask: 0, deviceID: device, cluster: cluster))
    }

    private func append(_ info: VMABlockInfo) {
        infos[entryCount] = info.rawValue
        entryCount += 1
        segment.clusters += 1
        if let last = segment.runs.last, last.device == info.deviceID, last.first + last.count == info.cluster {
            segment.runs[segment.runs.count - 1].count += 1
        } else {
            segment.runs.append((info.deviceID, info.cluster, 1))
        }
        if entryCount == VMAFormat.clustersPerExtent { endExtent() }
    }

    private func endExtent() {
        let blocks = (pos - extentStart - VMAFormat.extentHeaderSize) / VMAFormat.blockSize
        uuid.withUnsafeBytes { u in
            VMAExtentHeader.encode(into: UnsafeMutableRawBufferPointer(rebasing: stream[extentStart...]), uuid: u,
                                   infos: UnsafeBufferPointer(infos), blockCount: blocks, md5: md5)
        }
        segment.extents += 1
        infos.update(repeating: 0)
        entryCount = 0
        extentStart = pos
        pos += VMAFormat.extentHeaderSize
    }

    /// Ends the pending extent, compresses the segment as one zstd frame into
    /// `frame` (at least `frameCapacity` bytes) and starts a new, empty segment.
    /// A segment without clusters compresses to nothing.
    public func seal(into frame: UnsafeMutableRawBufferPointer) throws(ArchiveError) -> Segment {
        precondition(frame.count >= Self.frameCapacity)
        if entryCount > 0 { endExtent() }
        let length = extentStart
        defer {
            segment = Segment()
            dataClusters = 0
            extentStart = 0
            pos = VMAFormat.extentHeaderSize
        }
        guard length > 0 else { return segment }
        let r = ZSTD_compress2(cctx, frame.baseAddress, frame.count, stream.baseAddress, length)
        if ZSTD_isError(r) != 0 {
            throw ArchiveError(.compression, path: path, "zstd: frame of \(length) bytes: \(String(cString: ZSTD_getErrorName(r)))")
        }
        segment.streamBytes = UInt64(length)
        segment.frameBytes = r
        return segment
    }
}
