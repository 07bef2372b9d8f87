import Foundation

/// Whether a disk's next backup may be incremental: it may only when the
/// previous backup of the guest read the same volume from a base snapshot
/// that still exists, its index still matches its manifest, it did not fail
/// verification, and it was written with the same key (digests are keyed).
/// Otherwise the backup reads everything, and `reason` says why in the log.
public enum IncrementalBase: Sendable {
    /// Take unchanged digests from `index` of `previous`; ask the storage what changed since `base`.
    case incremental(previous: SnapshotName, index: FixedIndex, base: String)
    case full(reason: String)

    /// Decides for index `file` (`drive-scsi0.img.fidx`) of guest `type`/`id`,
    /// read from storage volume `volume`. `baseExists(name)` asks the storage
    /// whether the volume still has that snapshot.
    public static func find(repository: Repository, type: String = "vm", id: String, file: String, volume: String,
                            baseExists: (String) throws -> Bool) -> IncrementalBase {
        let fileName = file.hasSuffix(".fidx") ? file : file + ".fidx"
        let snapshots: [SnapshotName]
        do { snapshots = try repository.snapshots(type: type, id: id) } catch {
            return .full(reason: "cannot list the previous backups of \(type)/\(id): \(error)")
        }
        guard let previous = snapshots.last else { return .full(reason: "no previous backup of \(type)/\(id) in the repository") }
        let manifest: Manifest
        do { manifest = try repository.manifest(previous) } catch {
            return .full(reason: "previous backup \(previous): \(error)")
        }
        if manifest.unprotected.verifyState?.state == .failed {
            return .full(reason: "previous backup \(previous) failed verification")
        }
        if manifest.unprotected.keyFingerprint != repository.crypt?.fingerprint {
            return .full(reason: "previous backup \(previous) was written with \(manifest.unprotected.keyFingerprint.map { "key \($0)" } ?? "no key"), this one with \(repository.crypt.map { "key \($0.fingerprint)" } ?? "no key")")
        }
        guard let record = manifest.unprotected.baseSnapshots?.first(where: { $0.filename == fileName }) else {
            return .full(reason: "previous backup \(previous) kept no base snapshot for \(fileName)")
        }
        guard record.volume == volume else {
            return .full(reason: "previous backup \(previous) read \(fileName) from volume \(record.volume), not \(volume)")
        }
        let index: FixedIndex
        do { index = try repository.index(previous, file: fileName, manifest: manifest) } catch {
            return .full(reason: "previous backup \(previous): \(error)")
        }
        do {
            guard try baseExists(record.snapshot) else {
                return .full(reason: "base snapshot '\(record.snapshot)' of \(volume) no longer exists (deleted by hand?)")
            }
        } catch {
            return .full(reason: "cannot look for base snapshot '\(record.snapshot)' of \(volume): \(error)")
        }
        return .incremental(previous: previous, index: index, base: record.snapshot)
    }

    public var reason: String? {
        if case .full(let r) = self { return r }
        return nil
    }
}
