/// The outcome of one guest's backup, for the job summary.
public struct BackupSummary: Sendable, Codable {
    public var vmid: Int
    public var ok: Bool
    /// The mode actually used (after a fallback, `suspend`).
    public var mode: BackupMode?
    public var requestedMode: BackupMode
    public var fallbackReason: String?
    /// How snapshot mode froze the disks when not by storage snapshots: `fleecing`.
    public var method: String?
    public var downtimeMs: Int64?
    public var downtimeKind: String?
    /// Snapshot mode: milliseconds of each step inside the freeze window (`fs-freeze`, `snapshot`, `fs-thaw`, …).
    public var downtimeParts: [String: Int64]?
    public var archive: String?
    /// The guest's task log (`vzdump-qemu-<vmid>-<time>.log` in the dump directory).
    public var log: String?
    public var archiveBytes: UInt64 = 0
    public var diskBytes: UInt64 = 0
    public var readBytes: UInt64 = 0
    public var seconds: Double = 0
    public var storages: [String] = []
    public var error: String?
    /// A backup into a repository: chunks written and found.
    public var chunks: Chunks?
    /// A backup into a repository: what was read and stored per disk.
    public var disks: [Disk]?

    /// One disk of a backup into a repository.
    public struct Disk: Sendable, Codable, Equatable {
        /// `drive-scsi0`.
        public var name: String
        /// `full`, or the storage's change tracking (`btrfs send`, `FIEMAP`, `zfs send`, `rbd diff`, `thin_delta`).
        public var method: String
        /// Why the disk was read whole, when a base could have been used (`--full given`, `base snapshot … no longer exists`).
        public var fullReason: String?
        public var chunks: Int
        /// Chunks read from the disk; the others were holes, or digests taken from the previous backup.
        public var read: Int
        public var fromPrevious: Int
        public var bytesRead: UInt64
        /// Chunks the repository did not have, and the bytes written for them.
        public var newChunks: Int
        public var storedBytes: UInt64
    }

    public struct Chunks: Sendable, Codable, Equatable {
        /// Chunks the repository did not have, written now.
        public var new: Int
        /// Chunks found in the repository (or the zero chunk again), not written.
        public var reused: Int
        /// Bytes of the new chunks before compression.
        public var newBytes: UInt64
        /// Bytes written for them (compressed blobs).
        public var storedBytes: UInt64
        /// Chunks read from the disks (the rest were holes, or taken from the previous backup).
        public var read: Int? = nil
        /// Incremental forever: chunks whose digest came from the previous backup's index, not read.
        public var fromPrevious: Int? = nil
    }
}
