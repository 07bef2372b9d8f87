import Foundation
import SnapdumpSystem

/// Writes a VMA archive as a stream into a `.dat` file, compressed or not.
///
/// The header comes first in the stream but must carry `snapdump.json`,
/// whose digests are known only at the end. So the header is a fixed-size
/// region at the start of the file, rewritten in place by `finish`: plain
/// bytes (`none`), a zstd frame of raw blocks (`zstd`) or a gzip member of
/// stored blocks (`gzip`); the extents follow as ordinary compressed
/// frames/members. `zstd -d` / `gzip -d` read the file as one stream.
///
/// Lifecycle: `init` (creates the `.dat`), `addCluster`/`addZeroCluster` for
/// every cluster of every device exactly once (any order, devices may
/// interleave), `finish` (flush, rewrite header, fsync), `commit(to:)`
/// (rename, fsync directory). `abort()` — or dropping an uncommitted writer —
/// removes the `.dat`. Used from one thread at a time (not Sendable).
///
/// Streaming (`init(stream:…)`, `backup --stdout`): the archive goes to a
/// pipe in one pass — the same header region and extents, written in order,
/// never rewritten. So it carries no `snapdump.json` (its digests are known
/// only at the end). `finish` ends the stream and closes it; there is no
/// `commit`. `abort()` closes the stream where it is: the reader sees a cut
/// archive (a missing cluster, or a zstd/gzip stream without its end).
public final class VMAWriter {
    public struct Statistics: Sendable {
        /// Clusters added (data and zero).
        public var clusters: UInt64 = 0
        /// 4 KiB blocks stored in the archive.
        public var storedBlocks: UInt64 = 0
        /// Device bytes not stored because they are zero (holes included).
        public var zeroBytes: UInt64 = 0
        public var extents: UInt64 = 0
        /// Length of the uncompressed VMA stream.
        public var streamBytes: UInt64 = 0
        /// Size of the archive file.
        public var fileBytes: UInt64 = 0
    }

    /// The `.dat` file being written.
    public let path: String
    public let compression: Compression
    public let uuid: UUID
    public let ctime: Int64
    public let devices: [VMADevice]
    public let configs: [VMAConfigBlob]
    /// Bytes reserved for `snapdump.json` (nil: the archive has none).
    public let reservedMetadataSize: Int?
    public private(set) var statistics = Statistics()

    private enum State { case open, finished, committed, aborted, failed }
    private var state = State.open
    /// Where the archive goes: a new `.dat` file, or a stream written in order.
    private enum Target { case file, stream }
    private let target: Target
    /// True for a writer made with `init(stream:…)`.
    public var isStreaming: Bool { target == .stream }
    private var file: File?
    private var output: any CompressingOutput
    /// The stream after the header region, written past the page cache.
    private var appender: DirectAppender?
    private let regionSize: Int

    private let extent: UnsafeMutableRawBufferPointer
    private let infos: UnsafeMutableBufferPointer<UInt64>
    private var entryCount = 0
    private var extentPos = VMAFormat.extentHeaderSize
    private let uuidBytes: [UInt8]
    private let md5 = EVPHasher.md5()

    private struct DeviceState {
        var device: VMADevice
        var seen: ClusterSet
    }
    /// Indexed by device id; nil for unused ids.
    private var deviceStates: [DeviceState?] = Array(repeating: nil, count: 256)

    /// Creates (or truncates) the `.dat` file at `path` and writes the
    /// header region. `configs` must not include `snapdump.json`; pass
    /// `reservedMetadataSize` to reserve its room (see `SnapdumpMetadata.reservedSize`).
    public convenience init(path: String, uuid: UUID = UUID(), ctime: Int64, devices: [VMADevice], configs: [VMAConfigBlob],
                            reservedMetadataSize: Int?, compression: Compression) throws(ArchiveError) {
        try self.init(target: .file, path: path, stream: nil, uuid: uuid, ctime: ctime, devices: devices, configs: configs,
                      reservedMetadataSize: reservedMetadataSize, compression: compression)
    }

    /// Writes the archive to `stream` (a pipe, or any descriptor written in
    /// order; the writer owns and closes it): the header at once, then the
    /// extents as clusters are added. No `snapdump.json`: see the type's doc.
    public convenience init(stream: File, uuid: UUID = UUID(), ctime: Int64, devices: [VMADevice], configs: [VMAConfigBlob],
                            compression: Compression) throws(ArchiveError) {
        try self.init(target: .stream, path: stream.path, stream: stream, uuid: uuid, ctime: ctime, devices: devices, configs: configs,
                      reservedMetadataSize: nil, compression: compression)
    }

    private init(target: Target, path: String, stream: File?, uuid: UUID, ctime: Int64, devices: [VMADevice], configs: [VMAConfigBlob],
                 reservedMetadataSize: Int?, compression: Compression) throws(ArchiveError) {
        self.target = target
        self.path = path
        self.compression = compression
        self.uuid = uuid
        self.ctime = ctime
        self.devices = devices.sorted { $0.id < $1.id }
        self.configs = configs
        self.reservedMetadataSize = reservedMetadataSize
        uuidBytes = withUnsafeBytes(of: uuid.uuid) { Array($0) }

        if compression == .lzo { throw ArchiveError(.unsupported, path: path, Compression.lzoUnsupported) }
        for d in devices where d.size % VMAFormat.sectorSize != 0 {
            // Proxmox's vma refuses ("write beyond end") or truncates such a device: callers pad it.
            throw ArchiveError(.invalidArgument, path: path,
                               "size \(d.size) of device '\(d.name)' is not a multiple of 512 bytes (pad it to \(VMAFormat.paddedDeviceSize(d.size)), as QEMU presents it)")
        }
        if let r = reservedMetadataSize {
            guard r >= 2 && r <= VMAFormat.maxBlobSize else {
                throw ArchiveError(.invalidArgument, path: path, "reserved size \(r) for \(SnapdumpMetadata.blobName) outside 2…65535")
            }
            if configs.contains(where: { $0.name == SnapdumpMetadata.blobName }) {
                throw ArchiveError(.invalidArgument, path: path, "\(SnapdumpMetadata.blobName) is written by the writer, not passed as a config")
            }
        }
        let header = try Self.encodeHeader(path: path, uuid: uuid, ctime: ctime, devices: self.devices, configs: configs,
                                           metadata: reservedMetadataSize.map { SnapdumpMetadata.pad(Array("{}".utf8), to: $0)! })
        let region = HeaderRegion.wrap(header, compression.kind)
        regionSize = region.count

        let f: File
        if let stream {
            f = stream
        } else {
            do {
                f = try File.createNew(path)
            } catch {
                throw ArchiveError(.io, path: path, "cannot create archive", cause: error as? SystemError)
            }
        }
        do throws(ArchiveError) {
            try withBytes(region) { (b) throws(ArchiveError) in try writeFile(f, b, at: 0) }
            // A stream (a pipe) is written in order as it is: O_DIRECT on a pipe means packet mode.
            let sink: any OutputSink
            if target == .file {
                let a = region.withUnsafeBytes { DirectAppender(file: f, start: UInt64($0.count), prefix: $0) }
                appender = a
                sink = a
            } else {
                sink = f
            }
            output = try makeOutput(compression, file: sink, startOffset: UInt64(region.count))
        } catch {
            try? f.close()
            if target == .file { unlink(path) }
            throw error
        }
        file = f
        statistics.streamBytes = UInt64(header.count)

        extent = .allocate(byteCount: VMAFormat.maxExtentSize, alignment: 4096)
        infos = .allocate(capacity: VMAFormat.clustersPerExtent)
        infos.initialize(repeating: 0)
        for d in self.devices {
            deviceStates[Int(d.id)] = DeviceState(device: d, seen: ClusterSet(count: d.clusterCount))
        }
    }

    deinit {
        if state != .committed && state != .aborted { abort() }
        extent.deallocate()
        infos.deallocate()
    }

    private static func encodeHeader(path: String, uuid: UUID, ctime: Int64, devices: [VMADevice],
                                     configs: [VMAConfigBlob], metadata: [UInt8]?) throws(ArchiveError) -> [UInt8] {
        var all = configs
        if let metadata { all.append(VMAConfigBlob(name: SnapdumpMetadata.blobName, data: metadata)) }
        do {
            return try VMAHeader(uuid: uuid, ctime: ctime, configs: all, devices: devices).encode()
        } catch {
            throw ArchiveError(.invalidArgument, path: path, "cannot build VMA header: \(error.message)")
        }
    }

    private func checkOpen() throws(ArchiveError) {
        switch state {
        case .open: return
        case .failed: throw ArchiveError(.invalidArgument, path: path, "archive writer failed earlier")
        default: throw ArchiveError(.invalidArgument, path: path, "archive already finished")
        }
    }

    /// Marks the cluster as added; throws for unknown devices, clusters out of range, repeats.
    private func claim(_ device: UInt8, _ cluster: UInt32) throws(ArchiveError) -> VMADevice {
        try checkOpen()
        guard let s = deviceStates[Int(device)] else {
            throw ArchiveError(.invalidArgument, path: path, "no device with id \(device)")
        }
        guard UInt64(cluster) < s.seen.count else {
            throw ArchiveError(.invalidArgument, path: path, "cluster \(cluster) beyond the end of device \(device) (\(s.device.name))")
        }
        guard s.seen.insert(cluster) else {
            throw ArchiveError(.duplicateCluster, path: path, "duplicated cluster \(cluster) of device \(device) (\(s.device.name))")
        }
        return s.device
    }

    /// Adds cluster `cluster` (64 KiB at offset cluster × 65536) of device
    /// `device`. `data` holds the cluster's bytes; for the last cluster of a
    /// device only the bytes before the device end are read (so `data` may be
    /// that short), and blocks wholly past the end are masked out. Each
    /// all-zero 4 KiB block is left out (mask bit clear).
    public func addCluster(device: UInt8, cluster: UInt32, data: UnsafeRawBufferPointer) throws(ArchiveError) {
        let dev = try claim(device, cluster)
        let start = UInt64(cluster) * UInt64(VMAFormat.clusterSize)
        let valid = Int(min(UInt64(VMAFormat.clusterSize), dev.size - start))
        precondition(data.count >= valid, "cluster data of \(data.count) bytes, need \(valid)")
        let (mask, pos) = VMAFormat.packCluster(data.baseAddress!, valid: valid, into: extent.baseAddress!, at: extentPos)
        let stored = (pos - extentPos) / VMAFormat.blockSize
        statistics.storedBlocks += UInt64(stored)
        statistics.zeroBytes += UInt64(valid - min(valid, stored * VMAFormat.blockSize))
        extentPos = pos
        try append(VMABlockInfo(mask: mask, deviceID: device, cluster: cluster))
    }

    /// Adds an all-zero cluster (a hole that was never read): a mask-0 entry.
    public func addZeroCluster(device: UInt8, cluster: UInt32) throws(ArchiveError) {
        let dev = try claim(device, cluster)
        let start = UInt64(cluster) * UInt64(VMAFormat.clusterSize)
        statistics.zeroBytes += min(UInt64(VMAFormat.clusterSize), dev.size - start)
        try append(VMABlockInfo(mask: 0, deviceID: device, cluster: cluster))
    }

    private func append(_ info: VMABlockInfo) throws(ArchiveError) {
        infos[entryCount] = info.rawValue
        entryCount += 1
        statistics.clusters += 1
        if entryCount == VMAFormat.clustersPerExtent { try flushExtent() }
    }

    /// An encoder for segments that `append` takes (one per thread), or nil
    /// when this archive's compression has no independent frames to build
    /// apart (none, gzip): then clusters go through `addCluster`.
    public func makeSegmentEncoder() throws(ArchiveError) -> VMASegmentEncoder? {
        guard case .zstd(let level, _) = compression, output is ZstdOutput else { return nil }
        return try VMASegmentEncoder(path: path, uuid: uuidBytes, devices: devices, level: level)
    }

    /// Appends a segment sealed by an encoder of this writer, `frame` its
    /// compressed bytes, after the extent pending from `addCluster` (if any).
    /// Its clusters count as added: each must be new, as with `addCluster`.
    public func append(_ segment: VMASegmentEncoder.Segment, frame: UnsafeRawBufferPointer) throws(ArchiveError) {
        for run in segment.runs {
            for k in 0..<run.count { _ = try claim(run.device, run.first + k) }
        }
        guard segment.frameBytes > 0 else { return }
        precondition(frame.count == segment.frameBytes, "frame of \(frame.count) bytes for a segment of \(segment.frameBytes)")
        guard let zstd = output as? ZstdOutput else {
            throw ArchiveError(.invalidArgument, path: path, "segments need zstd compression")
        }
        do throws(ArchiveError) {
            if entryCount > 0 { try flushExtent() }
            try zstd.appendFrame(frame, uncompressedBytes: segment.streamBytes)
        } catch {
            state = .failed
            throw error
        }
        statistics.clusters += segment.clusters
        statistics.storedBlocks += segment.storedBlocks
        statistics.zeroBytes += segment.zeroBytes
        statistics.extents += segment.extents
        statistics.streamBytes += segment.streamBytes
    }

    /// Writes the pending extent (possibly empty) to the compressor.
    private func flushExtent() throws(ArchiveError) {
        let blocks = (extentPos - VMAFormat.extentHeaderSize) / VMAFormat.blockSize
        uuidBytes.withUnsafeBytes { u in
            VMAExtentHeader.encode(into: extent, uuid: u, infos: UnsafeBufferPointer(infos), blockCount: blocks, md5: md5)
        }
        do throws(ArchiveError) {
            try output.write(UnsafeRawBufferPointer(rebasing: extent[0..<extentPos]))
        } catch {
            state = .failed
            throw error
        }
        statistics.streamBytes += UInt64(extentPos)
        statistics.extents += 1
        infos.update(repeating: 0)
        entryCount = 0
        extentPos = VMAFormat.extentHeaderSize
    }

    /// Ends the archive: checks that every cluster was added, writes the last
    /// extent (an empty one if none is pending, as the C writer does at
    /// close), ends the compressed stream, rewrites the header region with
    /// `snapdumpJSON` (padded with spaces inside the JSON to the reserved
    /// size; required exactly when room was reserved) and fsyncs. The file keeps its `.dat` name until `commit`.
    public func finish(snapdumpJSON: [UInt8]?) throws(ArchiveError) {
        try checkOpen()
        var metadata: [UInt8]?
        switch (reservedMetadataSize, snapdumpJSON) {
        case (nil, nil): metadata = nil
        case (nil, .some): throw ArchiveError(.invalidArgument, path: path, "no room reserved for \(SnapdumpMetadata.blobName)")
        case (.some, nil): throw ArchiveError(.invalidArgument, path: path, "\(SnapdumpMetadata.blobName) missing: room was reserved for it")
        case (.some(let r), .some(let json)):
            guard let padded = SnapdumpMetadata.pad(json, to: r) else {
                throw ArchiveError(.invalidArgument, path: path,
                                   "\(SnapdumpMetadata.blobName) of \(json.count) bytes exceeds the \(r) bytes reserved")
            }
            metadata = padded
        }
        for case let s? in deviceStates {
            if let missing = s.seen.firstMissing() {
                throw ArchiveError(.missingCluster, path: path,
                                   "missing cluster \(missing) of device \(s.device.id) (\(s.device.name)): \(s.seen.count - s.seen.inserted) clusters not added")
            }
        }
        guard let file else { throw ArchiveError(.invalidArgument, path: path, "archive file closed") }
        if target == .stream { return try finishStream(file) }
        do throws(ArchiveError) {
            try flushExtent()
            let end = try output.finish()
            do {
                try appender?.finish()
            } catch {
                throw ArchiveError(.io, path: path, "cannot write", cause: error as? SystemError)
            }
            let header = try Self.encodeHeader(path: path, uuid: uuid, ctime: ctime, devices: devices, configs: configs, metadata: metadata)
            let region = HeaderRegion.wrap(header, compression.kind)
            precondition(region.count == regionSize, "header region changed size")
            try withBytes(region) { (b) throws(ArchiveError) in try writeFile(file, b, at: 0) }
            do {
                try file.sync()
                try file.close()
            } catch {
                throw ArchiveError(.io, path: path, "cannot sync archive", cause: error as? SystemError)
            }
            statistics.fileBytes = end
        } catch {
            state = .failed
            throw error
        }
        self.file = nil
        state = .finished
    }

    /// A stream's end: the last extent and the compressed stream's end, then
    /// the stream is closed (its reader sees the end of the archive). Nothing
    /// to rewrite, rename or fsync: the stream is complete once written.
    private func finishStream(_ file: File) throws(ArchiveError) {
        do throws(ArchiveError) {
            try flushExtent()
            statistics.fileBytes = try output.finish()
            do { try file.close() } catch {
                throw ArchiveError(.io, path: path, "cannot close archive stream", cause: error as? SystemError)
            }
        } catch {
            state = .failed
            throw error
        }
        self.file = nil
        state = .committed
    }

    /// Renames the finished `.dat` to `finalPath` (which must not exist) and
    /// fsyncs its directory: only now is the archive visible.
    public func commit(to finalPath: String) throws(ArchiveError) {
        guard target == .file else { throw ArchiveError(.invalidArgument, path: path, "a stream has no commit: finish ends it") }
        guard state == .finished else {
            throw ArchiveError(.invalidArgument, path: path, "commit before finish")
        }
        if FileSystem.exists(finalPath) {
            throw ArchiveError(.invalidArgument, path: finalPath, "archive already exists")
        }
        do {
            try FileSystem.rename(path, to: finalPath)
        } catch {
            throw ArchiveError(.io, path: path, "cannot rename to '\(finalPath)'", cause: error as? SystemError)
        }
        state = .committed
        let dir = (finalPath as NSString).deletingLastPathComponent
        do {
            try FileSystem.syncDirectory(dir.isEmpty ? "." : dir)
        } catch {
            throw ArchiveError(.io, path: finalPath, "cannot sync directory", cause: error as? SystemError)
        }
    }

    /// Closes and removes the `.dat` file (on error or cancel); a stream is
    /// only closed. Idempotent; does nothing after `commit` (or a stream's `finish`).
    public func abort() {
        guard state != .committed && state != .aborted else { return }
        appender?.close()  // no queued write may outlive the descriptor
        if let file { try? file.close() }
        file = nil
        if target == .file { unlink(path) }
        state = .aborted
    }
}
