import Foundation
import Repository
import SnapdumpSystem
import Storage
import Synchronization
import Testing
import TestSupport

/// A storage the change tracking runs on, and what it can do to a volume.
struct TrackingCase: Sendable, CustomTestStringConvertible {
    var plugin: PluginCase
    var method: String
    /// fallocate PUNCH_HOLE works on the volume's file (not zfs-fuse: "keep size mode is unsupported"; not rbd).
    var punchesHoles: Bool
    var testDescription: String { plugin.name }

    static let all: [TrackingCase] = [
        TrackingCase(plugin: PluginCase.all[2], method: "FIEMAP", punchesHoles: true),
        TrackingCase(plugin: PluginCase.all[3], method: "FIEMAP", punchesHoles: true),
        TrackingCase(plugin: PluginCase.all[4], method: "btrfs send", punchesHoles: true),
        TrackingCase(plugin: PluginCase.all[5], method: "zfs send", punchesHoles: false),
        TrackingCase(plugin: PluginCase.all[6], method: "rbd diff", punchesHoles: false),
        // Only inside the storage VM (device-mapper): LVMInVMTests runs it there.
        TrackingCase(plugin: PluginCase.all[8], method: "thin_delta", punchesHoles: false),
    ]
}

/// The bytes of a volume or snapshot.
private func contents(_ plugin: any StoragePlugin, _ volume: VolumeID, snapshot: String?) throws -> [UInt8] {
    try withSource(plugin, volume, snapshot: snapshot) { s in
        var out = [UInt8](repeating: 0, count: Int(s.size))
        let n = try out.withUnsafeMutableBytes { try s.read(at: 0, into: $0) }
        #expect(n == out.count)
        return out
    }
}

private func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var s = seed
    return (0..<n).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: s >> 33)
    }
}

/// Chunks whose bytes differ between two images (of possibly different sizes).
private func differingChunks(_ a: [UInt8], _ b: [UInt8], chunk: Int) -> IndexSet {
    var out = IndexSet()
    for i in 0..<(b.count + chunk - 1) / chunk {
        let lo = i * chunk, hi = min(b.count, lo + chunk)
        if hi > a.count || a[lo..<hi] != b[lo..<hi] { out.insert(i) }
    }
    return out
}

/// Backs up `volume` at `snapshot` into `repo` (incrementally from `previous` when `changed` is given, reading
/// only the changed ranges; reported zeros and holes of the snapshot unread, as the engine does); returns the upload and the snapshot name.
private func backup(_ repo: Repository, time: Int64, plugin: any StoragePlugin, volume: VolumeID, snapshot: String,
                    previous: FixedIndex? = nil, changed: ChangedChunks? = nil) throws -> (BackupWriter.DiskUpload, SnapshotName) {
    let name = SnapshotName(type: "vm", id: "100", time: time)
    let w = try BackupWriter(repository: repo, snapshot: name)
    let upload: BackupWriter.DiskUpload = try withSource(plugin, volume, snapshot: snapshot) { src in
        let read: @Sendable (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { off, buf in
            let n = try src.read(at: off, into: buf)
            guard n == buf.count else { throw TestFailure("short read at \(off) of \(volume)@\(snapshot)") }
        }
        if let previous, let changed {
            let knownZero: @Sendable (UInt64, Int) -> Bool = { off, len in
                let end = off + UInt64(len)
                if changed.ranges(ofChunk: Int(off / changed.chunkSize)).contains(where: { $0.kind == .zero && $0.offset <= off && end <= $0.offset + $0.length }) {
                    return true
                }
                return ((try? src.allocation(offset: off, length: UInt64(len))) ?? []).allSatisfy { $0.kind == .zero }
            }
            return try w.addDisk(name: "drive-scsi0.img", size: src.size, previous: previous, changed: changed.indices,
                                 changedRanges: { i in changed.ranges(ofChunk: i).map { $0.offset..<$0.offset + $0.length } },
                                 threads: 2, read: read, knownZero: knownZero)
        }
        let index = try w.addDisk(name: "drive-scsi0.img", size: src.size, threads: 2, read: read)
        return BackupWriter.DiskUpload(index: index, chunksRead: index.chunkCount, chunksReused: 0, bytesRead: src.size)
    }
    w.recordBase(name: "drive-scsi0.img", volume: volume.description, snapshot: snapshot)
    _ = try w.finish()
    return (upload, name)
}

private func restored(_ repo: Repository, _ s: SnapshotName) throws -> [UInt8] {
    let idx = try repo.index(s, file: "drive-scsi0.img.fidx")
    let out = Mutex([UInt8](repeating: 0, count: Int(idx.size)))
    try ChunkReader(repository: repo, snapshot: s).restore(idx, sparse: true) { off, b in
        out.withLock { o in o.withUnsafeMutableBytes { d in
            UnsafeMutableRawBufferPointer(rebasing: d[Int(off)..<Int(off) + b.count]).copyMemory(from: b)
        } }
    }
    return out.withLock { $0 }
}

@Suite("Change tracking between snapshots (real fixtures)", .serialized)
struct ChangeTrackingTests {
    static let chunk = 4 << 20

    @Test(arguments: TrackingCase.all)
    func changedChunksAndIncrementalBackup(_ c: TrackingCase) throws {
        let storage = try c.plugin.makeStorage()
        defer { storage.destroy() }
        let p = storage.plugin
        let repoDir = try Integration.scratchDirectory("i11-repo")
        defer { try? FileManager.default.removeItem(atPath: repoDir) }
        // Half the storages back up into an encrypted repository (keyed digests, encrypted chunks read back for patching).
        let repo = try Repository.create(root: repoDir + "/repo", crypt: c.plugin.seed % 2 == 1 ? CryptConfig(encKey: [UInt8](repeating: 5, count: 32)) : nil)

        // 8 whole chunks and a 12 KiB tail: the last chunk is short (LVs are whole 4 MiB extents: 9 chunks).
        let size = c.plugin.sizeGranularity == 4 << 20 ? UInt64(9 * Self.chunk) : UInt64(8 * Self.chunk + 12288)
        let volume = try p.allocate(vmid: 100, size: size, format: .raw)
        let initial = randomBytes(Int(size), seed: c.plugin.seed)
        do {
            let w = try p.openForWriting(volume)
            try initial.withUnsafeBytes { try w.write($0, at: 0) }
            try w.sync()
            try w.close()
        }
        let t0: Int64 = 1_790_000_000
        let base = BaseSnapshot.name(backupTime: t0)
        try p.createSnapshot([volume], name: base)
        let (_, first) = try backup(repo, time: t0, plugin: p, volume: volume, snapshot: base)

        // Chunk 0, 6, 7 untouched. 1: a 4 KiB write. 2: a punched hole (zeros written where the storage
        // cannot punch). 3: identical data written again. 4: a zeroed range. 5: a 1 MiB write.
        // 8 (the short last chunk): a write ending at the very end of the disk.
        let w = try p.openForWriting(volume)
        try randomBytes(4096, seed: 99).withUnsafeBytes { try w.write($0, at: UInt64(Self.chunk + 8192)) }
        let same = Array(initial[3 * Self.chunk + 65536..<3 * Self.chunk + 131072])
        try same.withUnsafeBytes { try w.write($0, at: UInt64(3 * Self.chunk + 65536)) }
        try [UInt8](repeating: 0, count: 131072).withUnsafeBytes { try w.write($0, at: UInt64(4 * Self.chunk + 4096)) }
        try randomBytes(1 << 20, seed: 98).withUnsafeBytes { try w.write($0, at: UInt64(5 * Self.chunk + 512 * 1024)) }
        try randomBytes(4096, seed: 97).withUnsafeBytes { try w.write($0, at: size - 4096) }
        if !c.punchesHoles {
            try [UInt8](repeating: 0, count: 262144).withUnsafeBytes { try w.write($0, at: UInt64(2 * Self.chunk + 1 << 20)) }
        }
        try w.sync()
        try w.close()
        if c.punchesHoles {
            let path = try p.path(of: volume).path
            try Command.run(["fallocate", "--punch-hole", "--offset", String(2 * Self.chunk + 1 << 20), "--length", "262144", path])
        }
        let t1 = t0 + 86400
        let new = BaseSnapshot.name(backupTime: t1)
        try p.createSnapshot([volume], name: new)

        let tracking = try p.changedChunks(volume, base: base, snapshot: new, chunkSize: UInt64(Self.chunk))
        guard let changed = tracking.changedChunks else {
            Issue.record("no answer from \(c.plugin.name): \(tracking.reason ?? "")")
            return
        }
        #expect(changed.method == c.method)
        let before = try contents(p, volume, snapshot: base), after = try contents(p, volume, snapshot: new)
        #expect(after.count == Int(size))
        let differing = differingChunks(before, after, chunk: Self.chunk)
        #expect(differing == IndexSet([1, 2, 4, 5, 8]), "the test's own changes")
        // (a) every differing chunk reported; (b) the only extra one allowed is the rewrite of identical data.
        #expect(differing.subtracting(changed.indices).isEmpty, "missed: \(Array(differing.subtracting(changed.indices)))")
        let extra = changed.indices.subtracting(differing)
        #expect(extra.isSubset(of: IndexSet([3])), "extra chunks reported: \(Array(extra))")
        print("\(c.plugin.name): \(changed.method) reported \(changed.indices.count) of \(changed.chunkCount) chunks, \(differing.count) differ, extra \(Array(extra))")

        // The next backup: incremental from the base the first one recorded, restored byte for byte.
        guard case .incremental(let prev, let index, let b) = IncrementalBase.find(
            repository: repo, id: "100", file: "drive-scsi0.img", volume: volume.description,
            baseExists: { try BaseSnapshot.exists($0, of: volume, on: p) }) else {
            Issue.record("expected an incremental backup")
            return
        }
        #expect(prev == first && b == base)
        let (upload, second) = try backup(repo, time: t1, plugin: p, volume: volume, snapshot: new, previous: index, changed: changed)
        #expect(upload.chunksReused == changed.chunkCount - changed.indices.count)
        // Only the changed ranges were read (the storage's granularity: a 128 KiB zfs record, an extent), each
        // chunk laid over its previous version; chunk-sized reads would be ≥ 5 × 4 MiB. At least the new random data was read.
        let changedData = UInt64(4096 + (1 << 20) + 4096)
        #expect(upload.bytesRead >= changedData && upload.bytesRead <= 3 << 20,
                "\(upload.bytesRead) bytes read for \(changedData) changed (reported: \(changed.changedBytes))")
        // zfs: the 128 KiB record holding the 4 KiB written at the end covers the whole short (12 KiB) last chunk: read whole.
        let wholeReads = c.method == "zfs send" ? 1 : 0
        #expect(upload.chunksPatched == changed.indices.count - wholeReads && upload.previousUnreadable == 0,
                "\(upload.chunksPatched) patched, \(upload.previousUnreadable) unreadable")
        #expect(try restored(repo, second) == after)
        #expect(try restored(repo, first) == before)
        print("\(c.plugin.name): \(upload.bytesRead) bytes read of \(changed.indices.count) changed chunks (reported \(changed.changedBytes))")

        // The previous chunk of a changed chunk gone from the store (removed by hand): that chunk is read whole, still right.
        try FileSystem.remove(repo.chunks.path(of: index.digests[5]))
        let (again, third) = try backup(repo, time: t1 + 1, plugin: p, volume: volume, snapshot: new, previous: index, changed: changed)
        #expect(again.previousUnreadable == 1 && again.chunksPatched == changed.indices.count - 1 - wholeReads,
                "\(again.chunksPatched) patched, \(again.previousUnreadable) unreadable")
        #expect(again.bytesRead >= UInt64(Self.chunk) && again.bytesRead <= UInt64(Self.chunk) + (3 << 20), "\(again.bytesRead)")
        #expect(try restored(repo, third) == after)
        try repo.remove(third)
        // A run killed after its snapshot and before its manifest left a base nobody recorded.
        let orphan = BaseSnapshot.name(backupTime: t1 + 3600)
        try p.createSnapshot([volume], name: orphan)
        #expect(try BaseSnapshot.drop([volume], on: p, keep: new) == [base, orphan])
        #expect(try BaseSnapshot.list(volume, on: p) == [new])

        // A base deleted by hand: the storage cannot tell, and the next backup is full, saying why.
        try p.deleteSnapshot([volume], name: new)
        let newer = BaseSnapshot.name(backupTime: t1 + 86400)
        try p.createSnapshot([volume], name: newer)
        let gone = try p.changedChunks(volume, base: new, snapshot: newer, chunkSize: UInt64(Self.chunk))
        #expect(gone.changedChunks == nil)
        #expect(gone.reason?.contains("does not exist") == true, "\(gone)")
        let plan = IncrementalBase.find(repository: repo, id: "100", file: "drive-scsi0.img", volume: volume.description,
                                        baseExists: { try BaseSnapshot.exists($0, of: volume, on: p) })
        #expect(plan.reason?.contains("no longer exists") == true, "\(plan)")
        try p.deleteSnapshot([volume], name: newer)
        try p.free(volume)
        #expect(storage.leftovers().isEmpty, "\(storage.leftovers())")
        print("[\(c.plugin.name)] change tracking: every step ran")
    }

    /// The volume's file deleted and written anew between the snapshots (same
    /// name, another file): btrfs and zfs say they cannot tell, never "unchanged".
    @Test(arguments: [TrackingCase.all[2], TrackingCase.all[3]])
    func replacedFileIsUnknown(_ c: TrackingCase) throws {
        let storage = try c.plugin.makeStorage()
        defer { storage.destroy() }
        let p = storage.plugin
        let size = UInt64(2 * Self.chunk)
        let volume = try p.allocate(vmid: 100, size: size, format: .raw)
        let data = randomBytes(Int(size), seed: 5)
        let path = try p.path(of: volume).path
        try FileSystem.writeAtomically(path, bytes: data, mode: 0o600)
        try p.createSnapshot([volume], name: "snapdump_base_a")
        // The same bytes in a new file under the old name.
        try FileSystem.remove(path)
        try FileSystem.writeAtomically(path, bytes: data, mode: 0o600)
        try p.createSnapshot([volume], name: "snapdump_base_b")
        let r = try p.changedChunks(volume, base: "snapdump_base_a", snapshot: "snapdump_base_b", chunkSize: UInt64(Self.chunk))
        #expect(r.changedChunks == nil, "\(r)")
        print("\(c.plugin.name), file replaced: \(r.reason ?? "")")
        try p.deleteSnapshot([volume], name: "snapdump_base_a")
        try p.deleteSnapshot([volume], name: "snapdump_base_b")
        try p.free(volume)
    }
}

/// Every `zfs` command snapdump runs while `body` runs, as its argument lines: a `zfs` on
/// PATH that logs and passes on to the real one (transparent to anything else running).
private func zfsCommands<T>(_ body: () throws -> T) throws -> (T, [String]) {
    let dir = try Integration.scratchDirectory("zfs-log")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let real = Command.resolve("zfs")
    try FileSystem.writeAtomically(dir + "/zfs", bytes: Array("#!/bin/sh\necho \"$*\" >> \(dir)/log\nexec \(real) \"$@\"\n".utf8), mode: 0o755)
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    setenv("PATH", dir + ":" + path, 1)
    defer { setenv("PATH", path, 1) }
    let result = try body()
    let log = (try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? ""
    return (result, log.split(separator: "\n").map(String.init))
}

extension ChangeTrackingTests {
    /// zfs-fuse: a base read by a backup records its file's object and size on itself; tracking from
    /// such a base is two `zfs` commands (the snapshots' properties, the send), no clone, and keeps the
    /// changed data, which the snapshot's reader then serves without a clone of its own. From a base
    /// without the record the file is looked up in a clone of the base (the same chunks); a file
    /// replaced since the base is unknown.
    @Test func zfsFuseFollowsTheRecordedObjectWithoutAClone() throws {
        let c = TrackingCase.all[3]
        let storage = try c.plugin.makeStorage()
        defer { storage.destroy() }
        let p = storage.plugin
        let size = UInt64(4 * Self.chunk)
        let volume = try p.allocate(vmid: 100, size: size, format: .raw)
        let path = try p.path(of: volume).path
        let dataset = try ZFSRecords.dataset(holding: path)
        func recorded(_ snapshot: String) throws -> String { try ZFSRecords.identity(volume.volname, on: dataset, snapshot: snapshot) }
        func write(_ bytes: [UInt8], at offset: Int) throws {
            let w = try p.openForWriting(volume)
            try bytes.withUnsafeBytes { try w.write($0, at: UInt64(offset)) }
            try w.sync()
            try w.close()
        }
        try FileSystem.writeAtomically(path, bytes: randomBytes(Int(size), seed: 7), mode: 0o600)
        let identity = try ZFSRecords.liveIdentity(path)
        // The disk's path from the mount table, and a snapshot that is one `zfs snapshot`.
        let (resolved, lookups) = try zfsCommands { try p.path(of: volume).path }
        #expect(resolved == path && lookups.isEmpty, "\(lookups)")
        let (_, snapshotting) = try zfsCommands { try p.createSnapshot([volume], name: "snapdump_base_a") }
        #expect(snapshotting == ["snapshot \(dataset)@snapdump_base_a"], "\(snapshotting)")
        try write(randomBytes(4096, seed: 8), at: 2 * Self.chunk + 4096)
        try p.createSnapshot([volume], name: "snapdump_base_b")

        let (unrecorded, lookup) = try zfsCommands {
            try p.changedChunks(volume, base: "snapdump_base_a", snapshot: "snapdump_base_b", chunkSize: UInt64(Self.chunk))
        }
        #expect(lookup.contains { $0.hasPrefix("clone ") && $0.contains("snapdump_base_a") && $0.contains("snapdump-track") }, "\(lookup)")
        #expect(unrecorded.changedChunks?.indices == IndexSet([2]))
        // Read as a backup reads its base: the identity is recorded on it.
        #expect(try recorded("snapdump_base_b") == "-")
        try p.openBlockSource(volume, snapshot: "snapdump_base_b").close()
        #expect(try recorded("snapdump_base_b") == identity)

        let change = randomBytes(8192, seed: 9)
        try write(change, at: Self.chunk + 8192)
        try p.createSnapshot([volume], name: "snapdump_base_c")
        let (followed, commands) = try zfsCommands {
            try p.changedChunks(volume, base: "snapdump_base_b", snapshot: "snapdump_base_c", chunkSize: UInt64(Self.chunk))
        }
        let mine = commands.filter { $0.contains(dataset) }
        #expect(mine.count == 2 && mine[0].hasPrefix("get ") && mine[1].hasPrefix("send -i "), "\(mine)")
        let changes = try #require(followed.changedChunks)
        #expect(changes.indices == IndexSet([1]) && changes.data.map { "\($0.object)/\($0.size)" } == identity, "\(changes)")
        let (read, opening) = try zfsCommands { () -> [UInt8] in
            let source = try p.openBlockSource(volume, snapshot: "snapdump_base_c", changes: changes)
            var buffer = [UInt8](repeating: 0, count: 8192)
            var done = 0
            while done < buffer.count {
                done += try buffer.withUnsafeMutableBytes {
                    try source.read(at: UInt64(Self.chunk + 8192 + done), into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]))
                }
            }
            try source.close()
            return buffer
        }
        #expect(read == change)
        #expect(!opening.contains { $0.hasPrefix("clone ") }, "\(opening)")
        #expect(try recorded("snapdump_base_c") == identity, "the reader records the identity the stream proved")

        // The same bytes in a new file under the old name: the recorded object was freed.
        let data = try contents(p, volume, snapshot: nil)
        try FileSystem.remove(path)
        try FileSystem.writeAtomically(path, bytes: data, mode: 0o600)
        // As a backup runs it: the leftover listing first, whose base createtxg and identity the
        // tracking then uses (the send alone; the createtxg is what shows the object was freed).
        _ = try p.removeLeftovers(of: [volume], snapshotPrefix: "snapdump-")
        try p.createSnapshot([volume], name: "snapdump_base_d")
        let (replaced, sendOnly) = try zfsCommands {
            try p.changedChunks(volume, base: "snapdump_base_c", snapshot: "snapdump_base_d", chunkSize: UInt64(Self.chunk))
        }
        #expect(replaced.reason?.contains("freed") == true, "\(replaced)")
        #expect(sendOnly.filter { $0.contains(dataset) }.map { $0.split(separator: " ").prefix(2).joined(separator: " ") } == ["send -i"], "\(sendOnly)")
        // A listing's facts serve one tracking: asked again, the base's properties come from `zfs get`.
        let (again, asked) = try zfsCommands {
            try p.changedChunks(volume, base: "snapdump_base_c", snapshot: "snapdump_base_d", chunkSize: UInt64(Self.chunk))
        }
        #expect(again.reason?.contains("freed") == true, "\(again)")
        #expect(asked.contains { $0.hasPrefix("get ") }, "\(asked)")
        for s in ["snapdump_base_a", "snapdump_base_b", "snapdump_base_c", "snapdump_base_d"] { try p.deleteSnapshot([volume], name: s) }
        try p.free(volume)
        #expect(storage.leftovers().isEmpty, "\(storage.leftovers())")
    }
}
