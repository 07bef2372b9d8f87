import Archive
import Foundation
import Repository
import SnapdumpSystem
import Storage
import Synchronization

/// What `Restore` reads: a VMA archive, or a repository snapshot
/// (`repo1:backup/vm/100/2026-11-30T02:00:00Z`). Both give the archived
/// config and the disks (VMA device names, `drive-scsi0`), and write the
/// disks' data sparsely into volumes, checking every digest on the way.
enum RestoreInput {
    case archive(VMAReader, path: String)
    case repository(RepositoryStore, SnapshotName, Manifest)

    struct Device {
        var id: UInt8
        var name: String
        var size: UInt64
    }

    /// Opens the input and checks what can be checked before anything is allocated
    /// (a VMA's snapdump.json against its header; a snapshot's manifest and indexes).
    static func open(_ options: Restore.Options, storages: StorageRegistry) throws -> RestoreInput {
        if let volume = options.repositoryBackup {
            let def = try storages.config.storage(volume.storage)
            guard def.type == .repo, let path = def.path else {
                throw BackupError("storage '\(volume.storage)' is not a repository: '\(volume)' cannot be restored from it")
            }
            let store = try RepositoryStore(storage: volume.storage, path: path, encryptionKey: def.encryptionKey)
            let manifest = try store.repository.manifest(volume.snapshot)
            return .repository(store, volume.snapshot, manifest)
        }
        let reader = try VMAReader(path: options.archive)
        _ = try reader.checkedMetadata()
        return .archive(reader, path: options.archive)
    }

    /// For messages: the archive's path, or the snapshot's volume id.
    var label: String {
        switch self {
        case .archive(_, let path): return path
        case .repository(let store, let s, _): return store.volume(s).description
        }
    }

    /// `restore vma archive: …` / `restore repository backup: …`.
    var logLine: String {
        switch self {
        case .archive(_, let path): return "restore vma archive: \(path)"
        case .repository: return "restore repository backup: \(label)"
        }
    }

    /// The archived `qemu-server.conf` (with `#qmdump#map` lines).
    func configText() throws -> String {
        switch self {
        case .archive(let reader, let path):
            guard let bytes = reader.config(named: "qemu-server.conf") else {
                throw BackupError("archive '\(path)' has no qemu-server.conf: not a VM backup")
            }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        case .repository(let store, let s, let m):
            guard m.file("qemu-server.conf.blob") != nil else {
                throw BackupError("repository backup '\(label)' has no qemu-server.conf.blob: not a VM backup")
            }
            return String(decoding: try store.repository.blob(s, file: "qemu-server.conf.blob", manifest: m), as: UTF8.self)
        }
    }

    var devices: [Device] {
        get throws {
            switch self {
            case .archive(let reader, _):
                return reader.header.devices.map { Device(id: $0.id, name: $0.name, size: $0.size) }
            case .repository(let store, let s, let m):
                var out: [Device] = []
                for f in m.files where f.filename.hasSuffix(".img.fidx") {
                    let idx = try store.repository.index(s, file: f.filename, manifest: m)
                    out.append(Device(id: UInt8(out.count + 1), name: String(f.filename.dropLast(".img.fidx".count)), size: idx.size))
                }
                return out
            }
        }
    }

    /// Writes every device into `files` (by device id), zeros left as holes.
    /// Returns whether content digests were checked and the bytes written.
    func write(files: [UInt8: any VolumeWriter], progress: ReadProgress, bwlimitKiB: Int) throws -> (checked: Bool, bytes: UInt64) {
        let limit = BandwidthLimit(kibPerSecond: bwlimitKiB)
        switch self {
        case .archive(let reader, _):
            let readable = files.compactMapValues { ($0 as? FileVolumeWriter)?.file }
            // The digest workers write each chunk once it is hashed: files and block devices past the
            // page cache where they allow it (DirectFile), other volumes (RBD) through their writer.
            // Zero blocks and runs of zero clusters stay holes in the fresh volume.
            let writers = files.mapValues { w -> any DeviceWriter in
                if let f = w as? FileVolumeWriter { return DirectFile(file: f.file) }
                return VolumeDeviceWriter(w)
            }
            defer { for w in writers.values { try? (w as? DirectFile)?.closeDirect() } }
            let v = try reader.verify(targets: readable, writers: writers, progress: progress) { _ in
                limit?.wait(afterTotal: progress.bytesRead) { false }
            } zeroRuns: { _ in
                limit?.wait(afterTotal: progress.bytesRead) { false }
            }
            return (v.metadataChecked, v.bytesWritten)
        case .repository(let store, let s, let m):
            // Chunks are fetched, decompressed and checked on several threads (ChunkReader);
            // the progress lines and a writer that is not a plain file are serialised. Each
            // thread hands over a whole chunk from a page-aligned buffer at a chunk-aligned
            // offset: files and block devices take it past the page cache (DirectFile),
            // asynchronously (the thread decodes its next chunk meanwhile), as the VMA restore.
            let reader = ChunkReader(repository: store.repository, snapshot: s)
            let written = Atomic<UInt64>(0)
            let fetched = Atomic<UInt64>(0)
            let progressLock = Mutex(UInt64(0))
            for d in try devices {
                guard let file = files[d.id] else { continue }
                let index = try store.repository.index(s, file: d.name + ".img.fidx", manifest: m)
                let direct = (file as? FileVolumeWriter).map { DirectFile(file: $0.file) }
                defer { try? direct?.closeDirect() }
                let serial: NSLock? = direct == nil ? NSLock() : nil
                try reader.restore(index, sparse: true, submit: { offset, bytes, done in
                    let count = UInt64(bytes.count)
                    guard let direct else {
                        do { try serial!.withLock { try file.write(bytes, at: offset) } } catch { return done(error) }
                        written.add(count, ordering: .relaxed)
                        return done(nil)
                    }
                    direct.submit(bytes, at: offset) { error in
                        if error == nil { written.add(count, ordering: .relaxed) }
                        done(error)
                    }
                }, progress: { done in
                    let total = fetched.add(0, ordering: .relaxed).newValue + done
                    progressLock.withLock { reported in
                        guard total > reported else { return }
                        progress.add(bytes: total - reported, sparse: 0)
                        reported = total
                    }
                    limit?.wait(afterTotal: total) { false }
                })
                fetched.add(index.size, ordering: .relaxed)
            }
            let bytes = written.load(ordering: .relaxed)
            progress.add(bytes: 0, sparse: progress.bytesRead - min(progress.bytesRead, bytes))
            progress.finish()
            return (true, bytes)
        }
    }
}

/// A volume that is not a local file (an RBD image, through librbd) as the
/// digest workers' target: one write at a time, as the repository restore does.
private final class VolumeDeviceWriter: DeviceWriter {
    let volume: any VolumeWriter
    init(_ volume: any VolumeWriter) { self.volume = volume }
    var allowsConcurrentWrites: Bool { false }
    var name: String { volume.name }
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws { try volume.write(bytes, at: offset) }
}
