import Foundation
import SnapdumpSystem
import Archive

/// The SHA-256 states at the frame boundaries (1, 2 and 3 MiB) of each chunk
/// of one fixed index, recorded while its chunks were hashed: the next
/// incremental backup resumes a patched chunk's hash at its first changed
/// frame instead of decompressing and hashing the unchanged frames before it,
/// whose compressed bytes it copies (`BackupWriter`). A cache beside the
/// index (`drive-scsi0.img.fidx.midstates`), not an archive: not in the
/// manifest, never needed by a restore, written for unencrypted backups only,
/// and only the newest backup of a guest keeps it (`BackupWriter.finish`
/// removes the older ones'; prune removes it with its snapshot). PBS and
/// older snapdump ignore it; without it a patched chunk is built as before.
///
/// Trusted as the index is: bound to the index by its checksum and checked
/// whole by the SHA-256 of its body, else not used. A wrong state can never
/// give a chunk a digest its content matches: the digest of a patched chunk
/// is computed from the state over the bytes after it, so a state that does
/// not describe the copied frames yields a digest its data does not hash to
/// — a mismatch verify reports, never a chunk that silently holds other data.
///
///     0   magic[8] "SDMIDST1"
///     8   chunk count u64 LE
///     16  frame size u32 LE (bytes)     20  states per chunk u32 LE
///     24  index_csum[32]: the index's checksum (its header's, the manifest's csum)
///     56  SHA-256 of the body[32]
///     88  body: per chunk, per boundary, h0…h7 as u32 LE; all zero = not recorded
struct ChunkMidstates: Sendable {
    static let magic = Array("SDMIDST1".utf8)
    static let headerSize = 88
    static let suffix = ".midstates"
    /// Boundaries inside a full chunk: after frames 1, 2, 3.
    static let perChunk = Int(FixedIndex.defaultChunkSize) / DataBlob.frameSize - 1
    private static let entrySize = perChunk * 32

    /// The states of one chunk; frame 0's is always `SHA256State.initial`.
    struct Entry: Sendable {
        private var states: [SHA256State?] = Array(repeating: nil, count: ChunkMidstates.perChunk)

        /// The state after `frames` whole frames (0…perChunk).
        subscript(after frames: Int) -> SHA256State? {
            get { frames == 0 ? .initial : (frames <= states.count ? states[frames - 1] : nil) }
            set { if frames >= 1 && frames <= states.count { states[frames - 1] = newValue } }
        }

        var isEmpty: Bool { states.allSatisfy { $0 == nil } }
    }

    let count: Int
    private var body: [UInt8]

    init(count: Int) {
        self.count = count
        body = [UInt8](repeating: 0, count: count * Self.entrySize)
    }

    subscript(chunk i: Int) -> Entry {
        get {
            var e = Entry()
            guard i >= 0 && i < count else { return e }
            body.withUnsafeBytes { b in
                for j in 0..<Self.perChunk {
                    var w = SIMD8<UInt32>()
                    for k in 0..<8 { w[k] = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: i * Self.entrySize + j * 32 + 4 * k, as: UInt32.self)) }
                    if w != SIMD8<UInt32>() { e[after: j + 1] = SHA256State(words: w) }
                }
            }
            return e
        }
        set {
            guard i >= 0 && i < count else { return }
            body.withUnsafeMutableBytes { b in
                for j in 0..<Self.perChunk {
                    let w = newValue[after: j + 1]?.words ?? SIMD8<UInt32>()
                    for k in 0..<8 { b.storeBytes(of: w[k].littleEndian, toByteOffset: i * Self.entrySize + j * 32 + 4 * k, as: UInt32.self) }
                }
            }
        }
    }

    /// Where the states of index file `fileName` of the snapshot in `directory` are kept.
    static func path(directory: String, fileName: String) -> String { directory + "/" + fileName + suffix }

    /// The states recorded for `index` at `path`; nil when there are none, or
    /// they are not whole or not `index`'s (a backup then patches as without them).
    static func load(path: String, index: FixedIndex) -> ChunkMidstates? {
        guard let data = try? FileSystem.readBytes(path), data.count >= headerSize else { return nil }
        return data.withUnsafeBytes { b -> ChunkMidstates? in
            guard Array(b[0..<8]) == magic,
                  UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) == UInt64(index.chunkCount),
                  UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 16, as: UInt32.self)) == UInt32(DataBlob.frameSize),
                  UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 20, as: UInt32.self)) == UInt32(perChunk),
                  SHA256Digest(bytes: b[24..<56]) == index.indexChecksum,
                  data.count == headerSize + index.chunkCount * entrySize else { return nil }
            let body = UnsafeRawBufferPointer(rebasing: b[headerSize...])
            guard SHA256Digest(bytes: b[56..<88]) == SHA256.digest(body) else { return nil }
            var m = ChunkMidstates(count: index.chunkCount)
            m.body = Array(body)
            return m
        }
    }

    /// Writes them for `index` (whose checksum binds them) to `path`, atomically.
    func write(to path: String, index: FixedIndex) throws {
        precondition(index.chunkCount == count)
        var out = [UInt8](repeating: 0, count: Self.headerSize)
        out.withUnsafeMutableBytes { h in
            for k in 0..<8 { h[k] = Self.magic[k] }
            h.storeBytes(of: UInt64(count).littleEndian, toByteOffset: 8, as: UInt64.self)
            h.storeBytes(of: UInt32(DataBlob.frameSize).littleEndian, toByteOffset: 16, as: UInt32.self)
            h.storeBytes(of: UInt32(Self.perChunk).littleEndian, toByteOffset: 20, as: UInt32.self)
            for (k, v) in index.indexChecksum.bytes.enumerated() { h[24 + k] = v }
            for (k, v) in body.withUnsafeBytes({ SHA256.digest($0) }).bytes.enumerated() { h[56 + k] = v }
        }
        out += body
        try FileSystem.writeAtomically(path, bytes: out, mode: 0o600)
    }
}
