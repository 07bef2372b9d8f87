#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem
import Archive

/// A repository: a directory in PBS's datastore layout.
///
///     .chunks/0000…ffff/<digest>      ChunkStore
///     .lock  .gc.lock  .writers/      RepositoryLocks
///     .gc-status                      last gc's result (JSON)
///     vm/<vmid>/.lock                 per-guest lock
///     vm/<vmid>/<UTC time>/           a snapshot: *.fidx, *.blob, index.json.blob last,
///                                     .protected
///
/// With a `CryptConfig`, new chunks and blobs are encrypted and the
/// manifest is signed; reading needs the same key.
public struct Repository: Sendable {
    public let root: String
    public let crypt: CryptConfig?
    public let chunks: ChunkStore

    /// Opens an existing repository (one with a chunk store).
    public init(root: String, crypt: CryptConfig? = nil) throws {
        guard FileSystem.isDirectory(root + "/.chunks") else {
            throw RepositoryError(.notFound, root, "not a repository (no .chunks directory; run 'snapdump repo init')")
        }
        self.root = root
        self.crypt = crypt
        chunks = ChunkStore(root: root)
    }

    /// Creates the layout in `root` (an absent or empty directory), root-only.
    @discardableResult
    public static func create(root: String, crypt: CryptConfig? = nil) throws -> Repository {
        if FileSystem.isDirectory(root + "/.chunks") { throw RepositoryError(.exists, root, "is a repository already") }
        if FileSystem.isDirectory(root), let names = try? FileSystem.list(root), !names.isEmpty {
            throw RepositoryError(.exists, root, "directory is not empty")
        }
        do {
            try FileSystem.createDirectory(root, mode: 0o700)
            chmod(root, 0o700)
            try ChunkStore.create(root: root)
            let f = try File.open(root + "/.lock", O_RDWR | O_CREAT, mode: 0o600)
            try f.close()
            try FileSystem.syncDirectory(root)
        } catch {
            throw RepositoryError.io(root, "cannot create the repository", error)
        }
        return try Repository(root: root, crypt: crypt)
    }

    // MARK: snapshots

    public func directory(of s: SnapshotName) -> String { "\(root)/\(s.path)" }

    /// Finished snapshots (those with a manifest), sorted by guest, then time.
    public func snapshots(type: String? = nil, id: String? = nil) throws -> [SnapshotName] {
        var out: [SnapshotName] = []
        for t in SnapshotName.types where type == nil || t == type {
            let tdir = "\(root)/\(t)"
            guard FileSystem.isDirectory(tdir) else { continue }
            for gid in try FileSystem.list(tdir) where (id == nil || gid == id) && SnapshotName.isValidID(gid) {
                for tname in (try? FileSystem.list("\(tdir)/\(gid)")) ?? [] {
                    guard let time = SnapshotName.parseTime(tname) else { continue }
                    let s = SnapshotName(type: t, id: gid, time: time)
                    if FileSystem.exists(directory(of: s) + "/" + Manifest.fileName) { out.append(s) }
                }
            }
        }
        return out.sorted()
    }

    /// Snapshot directories without a manifest: backups running now, or left by killed runs.
    public func unfinishedSnapshots(type: String, id: String) -> [SnapshotName] {
        let gdir = "\(root)/\(type)/\(id)"
        return ((try? FileSystem.list(gdir)) ?? []).compactMap { name in
            guard let time = SnapshotName.parseTime(name) else { return nil }
            let s = SnapshotName(type: type, id: id, time: time)
            return FileSystem.exists(directory(of: s) + "/" + Manifest.fileName) ? nil : s
        }
    }

    public func exists(_ s: SnapshotName) -> Bool {
        FileSystem.exists(directory(of: s) + "/" + Manifest.fileName)
    }

    public func manifest(_ s: SnapshotName) throws -> Manifest {
        let path = directory(of: s) + "/" + Manifest.fileName
        guard FileSystem.exists(path) else { throw RepositoryError(.notFound, "snapshot \(s)", "does not exist in \(root)") }
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch { throw RepositoryError.io("snapshot \(s)", "cannot read its manifest", error) }
        let m = try Manifest(blob: bytes, object: "snapshot \(s) manifest")
        try m.verifySignature(crypt, object: "snapshot \(s) manifest")
        return m
    }

    /// Rewrites the manifest (its unprotected part changed), atomically.
    public func updateManifest(_ s: SnapshotName, _ change: (inout Manifest.Unprotected) -> Void) throws {
        let lock = try FileLock.acquire(directory(of: s) + "/.manifest.lock", timeout: 10)
        defer { lock.unlock() }
        var m = try manifest(s)
        change(&m.unprotected)
        do {
            try FileSystem.writeAtomically(directory(of: s) + "/" + Manifest.fileName, bytes: try m.encodedBlob(), mode: 0o600)
        } catch {
            throw RepositoryError.io("snapshot \(s)", "cannot rewrite its manifest", error)
        }
    }

    /// A fixed index of a snapshot, checked against the manifest's size and checksum.
    public func index(_ s: SnapshotName, file: String, manifest m: Manifest? = nil) throws -> FixedIndex {
        let m = try m ?? manifest(s)
        guard let info = m.file(file) else { throw RepositoryError(.notFound, "snapshot \(s)", "has no file '\(file)'") }
        let idx = try FixedIndex.read(directory(of: s) + "/" + file)
        guard idx.indexChecksum.hex == info.csum, idx.size == info.size else {
            throw RepositoryError(.corrupt, "snapshot \(s) index \(file)", "does not match the manifest (checksum or size differs)")
        }
        return idx
    }

    /// A blob file of a snapshot (config, log), checked against the manifest and decoded.
    public func blob(_ s: SnapshotName, file: String, manifest m: Manifest? = nil) throws -> [UInt8] {
        let m = try m ?? manifest(s)
        let path = directory(of: s) + "/" + file
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch { throw RepositoryError.io("snapshot \(s) file \(file)", "cannot read", error) }
        if let info = m.file(file) {
            guard SHA256.digest(bytes).hex == info.csum, UInt64(bytes.count) == info.size else {
                throw RepositoryError(.corrupt, "snapshot \(s) file \(file)", "does not match the manifest's checksum")
            }
        }
        return try DataBlob.decode(bytes, crypt: crypt, object: "snapshot \(s) file \(file)")
    }

    /// Stores a finished backup's task log as `client.log.blob` (compressed,
    /// encrypted like the other blobs). As in PBS it is written after the
    /// manifest and not listed in it; an existing log is never replaced.
    public func addLog(_ s: SnapshotName, _ text: [UInt8]) throws {
        guard exists(s) else { throw RepositoryError(.notFound, "snapshot \(s)", "does not exist in \(root)") }
        let path = directory(of: s) + "/" + Self.logBlobName
        if FileSystem.exists(path) { throw RepositoryError(.exists, "snapshot \(s)", "has a task log already") }
        do {
            try FileSystem.writeAtomically(path, bytes: try DataBlob.encode(text, compress: true, crypt: crypt), mode: 0o600)
        } catch let e as RepositoryError { throw e } catch {
            throw RepositoryError.io(path, "cannot write the task log", error)
        }
    }

    /// A snapshot's task log, if it has one.
    public func log(_ s: SnapshotName) throws -> [UInt8]? {
        let path = directory(of: s) + "/" + Self.logBlobName
        guard FileSystem.exists(path) else { return nil }
        return try blob(s, file: Self.logBlobName)
    }

    public static let logBlobName = "client.log.blob"

    public func isProtected(_ s: SnapshotName) -> Bool { FileSystem.exists(directory(of: s) + "/.protected") }

    public func setProtected(_ s: SnapshotName, _ on: Bool) throws {
        guard exists(s) else { throw RepositoryError(.notFound, "snapshot \(s)", "does not exist in \(root)") }
        let p = directory(of: s) + "/.protected"
        do {
            if on { try FileSystem.writeAtomically(p, "", mode: 0o600) } else { try FileSystem.remove(p) }
        } catch { throw RepositoryError.io("snapshot \(s)", "cannot change protection", error) }
    }

    public func notes(_ s: SnapshotName) throws -> String? { try manifest(s).unprotected.notes }

    public func setNotes(_ s: SnapshotName, _ notes: String?) throws {
        try updateManifest(s) { $0.notes = (notes?.isEmpty ?? true) ? nil : notes }
    }

    /// Removes a snapshot (refused when protected). Its chunks stay until gc.
    public func remove(_ s: SnapshotName, lockTimeout: Double = 10) throws {
        guard FileSystem.isDirectory(directory(of: s)) else { throw RepositoryError(.notFound, "snapshot \(s)", "does not exist in \(root)") }
        if isProtected(s) { throw RepositoryError(.invalidArgument, "snapshot \(s)", "is protected") }
        let lock = try RepositoryLocks.group(root: root, group: s.group, timeout: lockTimeout)
        defer { lock.unlock() }
        try removeDirectory(directory(of: s))
    }

    func removeDirectory(_ dir: String) throws {
        do {
            // The manifest first: from then on the snapshot no longer exists.
            try FileSystem.remove(dir + "/" + Manifest.fileName)
            for name in try FileSystem.list(dir) { try FileSystem.remove(dir + "/" + name) }
            try FileSystem.removeDirectory(dir)
        } catch {
            throw RepositoryError.io(dir, "cannot remove snapshot directory", error)
        }
    }

    /// The last gc's report, if any.
    public var gcStatusPath: String { root + "/.gc-status" }
}
