import Foundation
import Repository

/// A repository storage (type `repo`) as the backup engine and the
/// `backup …`/`prune` commands see it: the counterpart of `DumpDirectory`
/// for snapshots `vm/<vmid>/<time>`, named `<storage>:backup/vm/<vmid>/<time>`.
/// Retention, notes and protection follow the same rules as for archives.
public struct RepositoryStore: Sendable {
    public let storage: String
    public let repository: Repository
    /// Prune periods (days, weeks) are counted in this zone, as for archives (nil: local time).
    public let timeZone: TimeZone?

    public init(storage: String, repository: Repository, timeZone: TimeZone? = nil) {
        self.storage = storage
        self.repository = repository
        self.timeZone = timeZone
    }

    /// Opens the repository at `path`, with the storage's key file if it has one.
    public init(storage: String, path: String, encryptionKey: String?, timeZone: TimeZone? = nil) throws {
        let crypt = try encryptionKey.map { try KeyFile.crypt(from: $0) }
        self.init(storage: storage, repository: try Repository(root: path, crypt: crypt), timeZone: timeZone)
    }

    public func volume(_ s: SnapshotName) -> RepositoryVolume { RepositoryVolume(storage: storage, snapshot: s) }

    /// The finished snapshots of guest `vmid` (every guest when nil), newest first.
    public func snapshots(vmid: Int? = nil) throws -> [SnapshotName] {
        try repository.snapshots(type: "vm", id: vmid.map(String.init))
            .sorted { $0.time != $1.time ? $0.time > $1.time : $0.id < $1.id }
    }

    /// One snapshot and what prune does (or did) with it.
    public struct PruneResult: Sendable {
        public var snapshot: SnapshotName
        public var mark: PruneMark
    }

    /// Proxmox's prune marks, each guest its own group; protected snapshots
    /// are marked `protected` and never removed. Newest first.
    public func pruneMarks(vmid: Int?, policy: PrunePolicy) throws -> [PruneResult] {
        let all = try snapshots(vmid: vmid)
        var marks = [PruneMark](repeating: .keep, count: all.count)
        for (_, indices) in Dictionary(grouping: all.indices, by: { all[$0].id }) {
            let m = policy.mark(indices.map { PrunePolicy.Entry(date: all[$0].date, isProtected: repository.isProtected(all[$0])) },
                                timeZone: timeZone)
            for (k, i) in indices.enumerated() { marks[i] = m[k] }
        }
        return all.indices.map { PruneResult(snapshot: all[$0], mark: marks[$0]) }
    }

    /// Prunes like `DumpDirectory.prune`: a removal that fails is logged, the
    /// others still run, then it throws. Chunks stay until `repo gc`.
    @discardableResult
    public func prune(vmid: Int?, policy: PrunePolicy, dryRun: Bool = false,
                      log: (TaskLog.Level, String) -> Void = { _, _ in }) throws -> [PruneResult] {
        let results = try pruneMarks(vmid: vmid, policy: policy)
        guard !dryRun else { return results }
        try PrunePolicy.removeMarked(results.map { ($0.snapshot, $0.mark) }, label: { volume($0).description },
                                     remove: { try repository.remove($0); return [] }, log: log)
        return results
    }

    /// vzdump's `remove 0` limit (`PrunePolicy.checkBackupLimit`), over the guest's snapshots.
    public func checkBackupLimit(vmid: Int, policy: PrunePolicy, remove: Bool, protected: Bool) throws {
        try policy.checkBackupLimit(remove: remove, protected: protected) {
            try snapshots(vmid: vmid).filter { !repository.isProtected($0) }.count
        }
    }
}
