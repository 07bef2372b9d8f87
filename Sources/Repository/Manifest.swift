import Foundation

/// A snapshot's manifest, `index.json.blob` (PBS `manifest.rs`): which files
/// the snapshot holds, each with its size and checksum. Written last: a
/// snapshot exists once its manifest does. Stored as a zstd blob, never
/// encrypted; with a key, `signature` is HMAC-SHA256(idKey) over the
/// canonical JSON without `unprotected` and `signature`, so the file list
/// cannot be changed unnoticed while notes and verify state can.
public struct Manifest: Codable, Sendable, Equatable {
    public static let fileName = "index.json.blob"

    public enum CryptMode: String, Codable, Sendable {
        case none, encrypt
        case signOnly = "sign-only"
    }

    public struct FileInfo: Codable, Sendable, Equatable {
        public var filename: String
        public var cryptMode: CryptMode
        /// A fixed index: the disk's size. A blob: the blob file's size.
        public var size: UInt64
        /// A fixed index: its index checksum. A blob: SHA-256 of the blob file.
        public var csum: String

        public init(filename: String, cryptMode: CryptMode, size: UInt64, csum: String) {
            self.filename = filename
            self.cryptMode = cryptMode
            self.size = size
            self.csum = csum
        }

        enum CodingKeys: String, CodingKey {
            case filename, size, csum
            case cryptMode = "crypt-mode"
        }
    }

    public struct VerifyState: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable { case ok, failed }
        public var upid: String
        public var state: State

        public init(upid: String, state: State) {
            self.upid = upid
            self.state = state
        }
    }

    /// What may change after the backup without breaking the signature.
    public struct Unprotected: Codable, Sendable, Equatable {
        public var keyFingerprint: String?
        public var verifyState: VerifyState?
        public var notes: String?
        public var chunkUploadStats: ChunkUploadStats?
        /// The storage snapshot each disk was read from, kept as the base of
        /// the next (incremental) backup. snapdump's own key; PBS ignores it.
        public var baseSnapshots: [BaseSnapshotRecord]?

        public init() {}

        enum CodingKeys: String, CodingKey {
            case notes
            case baseSnapshots = "snapdump-base-snapshots"
            case keyFingerprint = "key-fingerprint"
            case verifyState = "verify_state"
            case chunkUploadStats = "chunk_upload_stats"
        }
    }

    /// What the backup that wrote the snapshot stored.
    public struct ChunkUploadStats: Codable, Sendable, Equatable {
        public var count: Int
        public var size: UInt64
        public var compressedSize: UInt64
        public var duplicates: Int

        public init(count: Int, size: UInt64, compressedSize: UInt64, duplicates: Int) {
            self.count = count
            self.size = size
            self.compressedSize = compressedSize
            self.duplicates = duplicates
        }

        enum CodingKeys: String, CodingKey {
            case count, size, duplicates
            case compressedSize = "compressed_size"
        }
    }

    /// A disk's base snapshot: the index `filename` was read from snapshot
    /// `snapshot` of storage volume `volume` (`tank:vm-100-disk-0`).
    /// `incrementalRuns`: backups of the disk since it was last read whole,
    /// this one included (0: this backup read it whole), for `full-every`.
    public struct BaseSnapshotRecord: Codable, Sendable, Equatable {
        public var filename: String
        public var volume: String
        public var snapshot: String
        /// Nil in manifests written before the count existed.
        public var incrementalRuns: Int?

        public init(filename: String, volume: String, snapshot: String, incrementalRuns: Int? = nil) {
            self.filename = filename
            self.volume = volume
            self.snapshot = snapshot
            self.incrementalRuns = incrementalRuns
        }

        enum CodingKeys: String, CodingKey {
            case filename, volume, snapshot
            case incrementalRuns = "incremental-runs"
        }
    }

    public var backupType: String
    public var backupID: String
    public var backupTime: Int64
    public var files: [FileInfo]
    public var unprotected: Unprotected
    public var signature: String?

    public init(snapshot: SnapshotName, files: [FileInfo], unprotected: Unprotected = Unprotected()) {
        backupType = snapshot.type
        backupID = snapshot.id
        backupTime = snapshot.time
        self.files = files
        self.unprotected = unprotected
    }

    enum CodingKeys: String, CodingKey {
        case files, unprotected, signature
        case backupType = "backup-type"
        case backupID = "backup-id"
        case backupTime = "backup-time"
    }

    public var snapshot: SnapshotName { SnapshotName(type: backupType, id: backupID, time: backupTime) }

    public func file(_ name: String) -> FileInfo? { files.first { $0.filename == name } }

    /// Sorted keys, no whitespace, '/' unescaped: the bytes the signature covers.
    static func canonicalJSON<T: Encodable>(_ value: T) throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try enc.encode(value))
    }

    private var signedPart: Manifest {
        var m = self
        m.unprotected = Unprotected()
        m.signature = nil
        return m
    }

    /// Signs with the key (sets `signature`); files of an encrypted backup are `encrypt`.
    public mutating func sign(_ crypt: CryptConfig) throws {
        unprotected.keyFingerprint = crypt.fingerprint
        var signed = try Self.canonicalJSON(SignedView(signedPart))
        signature = crypt.authTag(signed).map { String($0, radix: 16).leftPadded(2) }.joined()
        signed.removeAll()
    }

    /// Checks the signature when the manifest has one (needs the key then).
    public func verifySignature(_ crypt: CryptConfig?, object: String) throws {
        guard let signature else { return }
        guard let crypt else { throw RepositoryError(.crypt, object, "manifest is signed and no encryption key is configured") }
        let expected = crypt.authTag(try Self.canonicalJSON(SignedView(signedPart))).map { String($0, radix: 16).leftPadded(2) }.joined()
        guard expected == signature else {
            throw RepositoryError(.crypt, object, "manifest signature mismatch (wrong key, or the file list was changed)")
        }
    }

    /// The blob bytes of `index.json.blob`.
    public func encodedBlob() throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try DataBlob.encode(Array(try enc.encode(self)), compress: true, crypt: nil)
    }

    public init(blob: [UInt8], object: String) throws {
        let json = try DataBlob.decode(blob, crypt: nil, object: object, limit: 16 << 20)
        do {
            self = try JSONDecoder().decode(Manifest.self, from: Data(json))
        } catch {
            throw RepositoryError(.format, object, "manifest is not valid JSON: \(error)")
        }
    }
}

/// The signed fields only (encodes nothing for `unprotected` and `signature`).
private struct SignedView: Encodable {
    let m: Manifest
    init(_ m: Manifest) { self.m = m }
    enum CodingKeys: String, CodingKey {
        case files
        case backupType = "backup-type"
        case backupID = "backup-id"
        case backupTime = "backup-time"
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(m.backupType, forKey: .backupType)
        try c.encode(m.backupID, forKey: .backupID)
        try c.encode(m.backupTime, forKey: .backupTime)
        try c.encode(m.files, forKey: .files)
    }
}
