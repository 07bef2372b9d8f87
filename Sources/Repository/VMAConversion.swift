import Foundation
import SnapdumpSystem
import Archive

/// `repo import` / `repo export --vma`: VMA archives and repository
/// snapshots convert both ways. A device `drive-scsi0` becomes
/// `drive-scsi0.img.fidx`, config `qemu-server.conf` becomes
/// `qemu-server.conf.blob`, as PBS names them.
public enum VMAConversion {
    /// Imports an archive (plain, .zst or .gz) as a new snapshot of the
    /// guest it holds (`vmid`) at its creation time. Clusters are assembled
    /// into 4 MiB chunks (at most `maxPending` chunks in memory at a time).
    public static func importArchive(_ path: String, into repo: Repository, vmid: String,
                                     maxPending: Int = 16, log: (String) -> Void = { _ in }) throws -> SnapshotName {
        let reader = try VMAReader(path: path)
        let snapshot = SnapshotName(id: vmid, time: reader.header.ctime)
        let writer = try BackupWriter(repository: repo, snapshot: snapshot)
        let chunkSize = Int(FixedIndex.defaultChunkSize)
        let clustersPerChunk = chunkSize / VMAFormat.clusterSize
        struct Pending { var buffer: [UInt8]; var received: Int }
        struct Device { var dev: VMADevice; var digests: [SHA256Digest]; var clusters: UInt64 }
        var devices: [UInt8: Device] = [:]
        for d in reader.header.devices {
            devices[d.id] = Device(dev: d, digests: Array(repeating: SHA256Digest(), count: FixedIndex.chunkCount(size: d.size)),
                                   clusters: VMAFormat.clusterCount(deviceSize: d.size))
        }
        var pending: [Int: Pending] = [:] // key: device id << 32 | chunk
        do {
            _ = try reader.readClusters { c in
                guard let dev = devices[c.deviceID] else { return }
                let chunk = Int(c.cluster) / clustersPerChunk
                let key = Int(c.deviceID) << 32 | chunk
                var p = pending[key] ?? {
                    let len = Int(min(UInt64(chunkSize), dev.dev.size - UInt64(chunk * chunkSize)))
                    return Pending(buffer: [UInt8](repeating: 0, count: len), received: 0)
                }()
                if pending[key] == nil && pending.count >= maxPending {
                    throw RepositoryError(.format, path, "clusters too far out of order (more than \(maxPending) chunks incomplete)")
                }
                let base = (Int(c.cluster) % clustersPerChunk) * VMAFormat.clusterSize
                if c.mask != 0 {
                    var cluster = [UInt8](repeating: 0, count: VMAFormat.clusterSize)
                    cluster.withUnsafeMutableBytes { c.expand(into: $0) }
                    let n = min(VMAFormat.clusterSize, p.buffer.count - base)
                    p.buffer.replaceSubrange(base..<base + n, with: cluster[0..<n])
                }
                p.received += 1
                let first = UInt64(chunk * clustersPerChunk)
                let expected = Int(min(UInt64(clustersPerChunk), dev.clusters - first))
                if p.received == expected {
                    let d = try p.buffer.withUnsafeBytes { try writer.store(chunk: $0) }
                    devices[c.deviceID]!.digests[chunk] = d
                    pending[key] = nil
                } else {
                    pending[key] = p
                }
            }
        } catch let e as RepositoryError {
            writer.abort()
            throw e
        } catch {
            writer.abort()
            throw RepositoryError(.format, path, "cannot import: \(error)")
        }
        let metadata: SnapdumpMetadata?
        do { metadata = try reader.checkedMetadata() } catch {
            writer.abort()
            throw RepositoryError(.format, path, "cannot import: \(error)")
        }
        for d in devices.values.sorted(by: { $0.dev.id < $1.dev.id }) {
            let idx = FixedIndex(uuid: Array(withUnsafeBytes(of: reader.header.uuid.uuid) { Array($0) }), ctime: reader.header.ctime,
                                 size: d.dev.size, digests: d.digests)
            // Unencrypted chunk digests are snapdump's per-chunk device digests, so the
            // index checksum must equal the archive's device digest. (Keyed digests of an
            // encrypted repository cannot be compared: the archive's own MD5s still were.)
            if repo.crypt == nil, let want = metadata?.device(named: d.dev.name)?.digest, want != idx.indexChecksum {
                writer.abort()
                throw RepositoryError(.corrupt, path, "device \(d.dev.name): content digest \(idx.indexChecksum.hex) does not match snapdump.json (\(want.hex)); nothing imported")
            }
            try writer.addIndex(name: d.dev.name + ".img", idx)
        }
        // snapdump.json is kept too: it records the backup mode, which an export must carry on.
        for c in reader.header.configs {
            try writer.addBlob(name: c.name + ".blob", data: c.data)
        }
        _ = try writer.finish(notes: nil)
        log("imported \(path) as \(snapshot): \(writer.stats.count) new chunks, \(writer.stats.duplicates) known")
        return snapshot
    }

    /// Writes a snapshot as a zstd VMA archive at `path` (written as
    /// `<path>.dat`, renamed when complete). `snapdump.json` is written when
    /// the snapshot knows its backup mode (it has one) and the repository is
    /// unencrypted: its chunk digests are exactly snapdump's per-chunk device
    /// digests, so the index checksum is the device digest.
    public static func exportArchive(_ snapshot: SnapshotName, from repo: Repository, to path: String) throws {
        let m = try repo.manifest(snapshot)
        var devices: [VMADevice] = []
        var indexes: [FixedIndex] = []
        for (i, f) in m.files.filter({ $0.filename.hasSuffix(".img.fidx") }).enumerated() {
            let idx = try repo.index(snapshot, file: f.filename, manifest: m)
            devices.append(VMADevice(id: UInt8(i + 1), name: String(f.filename.dropLast(".img.fidx".count)), size: idx.size))
            indexes.append(idx)
        }
        var configs: [VMAConfigBlob] = []
        for f in m.files where f.filename.hasSuffix(".blob") && f.filename != SnapdumpMetadata.blobName + ".blob" {
            configs.append(VMAConfigBlob(name: String(f.filename.dropLast(".blob".count)), data: try repo.blob(snapshot, file: f.filename, manifest: m)))
        }
        let dat = path + ".dat"
        var meta: SnapdumpMetadata?
        if repo.crypt == nil, m.file(SnapdumpMetadata.blobName + ".blob") != nil,
           var old = try? SnapdumpMetadata.decode(try repo.blob(snapshot, file: SnapdumpMetadata.blobName + ".blob", manifest: m)) {
            old.devices = zip(devices, indexes).map { SnapdumpMetadata.Device(name: $0.name, size: $0.size, sha256: $1.indexChecksum) }
            meta = old
        }
        let writer = try VMAWriter(path: dat, ctime: snapshot.time, devices: devices, configs: configs,
                                   reservedMetadataSize: meta.map { _ in SnapdumpMetadata.reservedSize(deviceCount: devices.count) },
                                   compression: .zstd(level: 3, workers: 0))
        do {
            let reader = ChunkReader(repository: repo, snapshot: snapshot)
            let zero = repo.crypt == nil ? DeviceDigest.zeroChunkDigest : nil
            let clustersPerChunk = Int(FixedIndex.defaultChunkSize) / VMAFormat.clusterSize
            for (dev, idx) in zip(devices, indexes) {
                let clusters = VMAFormat.clusterCount(deviceSize: idx.size)
                for (i, d) in idx.digests.enumerated() {
                    let first = UInt64(i * clustersPerChunk)
                    let n = Int(min(UInt64(clustersPerChunk), clusters - first))
                    if d == zero && idx.chunkLength(i) == Int(idx.chunkSize) {
                        for c in 0..<n { try writer.addZeroCluster(device: dev.id, cluster: UInt32(first) + UInt32(c)) }
                        continue
                    }
                    let data = try reader.chunk(d, expectedLength: idx.chunkLength(i))
                    try data.withUnsafeBytes { b in
                        for c in 0..<n {
                            let lo = c * VMAFormat.clusterSize
                            let hi = min(lo + VMAFormat.clusterSize, b.count)
                            try writer.addCluster(device: dev.id, cluster: UInt32(first) + UInt32(c), data: UnsafeRawBufferPointer(rebasing: b[lo..<hi]))
                        }
                    }
                }
            }
            try writer.finish(snapdumpJSON: try meta?.encoded())
            try writer.commit(to: path)
        } catch {
            writer.abort()
            throw error
        }
    }
}
