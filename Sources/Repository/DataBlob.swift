import Archive
import CZstd
import SnapdumpSystem

/// PBS's blob format (`file_formats.rs`, `data_blob.rs`), used for every
/// chunk and for the manifest, config and log files of a snapshot:
///
///     0  magic[8]      which of the four kinds below
///     8  crc32 u32 LE  IEEE CRC over every byte after the header
///    12  data          (unencrypted kinds)
///    12  iv[16], 28 tag[16], 44 ciphertext   (encrypted kinds)
///
/// Data is zstd level 1 when that is smaller, else stored as is. Encrypted
/// blobs are compressed first, then AES-256-GCM encrypted.
public enum DataBlob {
    public enum Kind: Sendable, CaseIterable {
        case plain, zstd, encrypted, encryptedZstd

        /// sha256("Proxmox Backup … v1.0")[0..8]; do not change.
        public var magic: [UInt8] {
            switch self {
            case .plain: [66, 171, 56, 7, 190, 131, 112, 161]
            case .zstd: [49, 185, 88, 66, 111, 182, 163, 127]
            case .encrypted: [123, 103, 133, 190, 34, 45, 76, 240]
            case .encryptedZstd: [230, 89, 27, 191, 11, 191, 216, 11]
            }
        }

        public var isEncrypted: Bool { self == .encrypted || self == .encryptedZstd }
        var isCompressed: Bool { self == .zstd || self == .encryptedZstd }
        var headerSize: Int { isEncrypted ? 44 : 12 }

        public init?(magic: some Collection<UInt8>) {
            let m = Array(magic.prefix(8))
            guard let k = Kind.allCases.first(where: { $0.magic == m }) else { return nil }
            self = k
        }
    }

    /// The largest blob PBS accepts (the code's limit; its docs say 16 MiB).
    public static let maxSize = 128 * 1024 * 1024

    /// Encodes `data`: compressed if `compress` and smaller, encrypted if `crypt` is given.
    public static func encode(_ data: UnsafeRawBufferPointer, compress: Bool = true, crypt: CryptConfig? = nil) throws -> [UInt8] {
        let compressed = compress ? Zstd.compressIfSmaller(data) : nil
        var out: [UInt8]
        if let crypt {
            let kind: Kind = compressed == nil ? .encrypted : .encryptedZstd
            let sealed: (iv: [UInt8], tag: [UInt8], ciphertext: [UInt8])
            if let compressed {
                sealed = try compressed.withUnsafeBytes { try crypt.encrypt($0) }
            } else {
                sealed = try crypt.encrypt(data)
            }
            out = kind.magic + [0, 0, 0, 0] + sealed.iv + sealed.tag
            out.append(contentsOf: sealed.ciphertext)
        } else if let compressed {
            out = Kind.zstd.magic + [0, 0, 0, 0]
            out.append(contentsOf: compressed)
        } else {
            out = Kind.plain.magic + [0, 0, 0, 0]
            out.append(contentsOf: data)
        }
        let crc = out.withUnsafeBytes { crc32(UnsafeRawBufferPointer(rebasing: $0[12...])) }
        withUnsafeBytes(of: crc.littleEndian) { c in for i in 0..<4 { out[8 + i] = c[i] } }
        return out
    }

    public static func encode(_ data: [UInt8], compress: Bool = true, crypt: CryptConfig? = nil) throws -> [UInt8] {
        try data.withUnsafeBytes { try encode($0, compress: compress, crypt: crypt) }
    }

    /// The kind, after checking magic, minimum size and CRC. `object` names the blob in errors.
    public static func check(_ blob: UnsafeRawBufferPointer, object: String) throws -> Kind {
        guard blob.count >= 12, let kind = Kind(magic: blob[0..<8]) else {
            throw RepositoryError(.format, object, "not a blob (unknown magic)")
        }
        guard blob.count >= kind.headerSize else { throw RepositoryError(.corrupt, object, "blob truncated (\(blob.count) bytes)") }
        let stored = UInt32(littleEndian: blob.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let actual = crc32(UnsafeRawBufferPointer(rebasing: blob[12...]))
        guard stored == actual else {
            throw RepositoryError(.corrupt, object, "CRC mismatch (stored \(hex32(stored)), computed \(hex32(actual)))")
        }
        return kind
    }

    /// The data of a blob: CRC checked, decrypted (needs `crypt`), decompressed.
    public static func decode(_ blob: UnsafeRawBufferPointer, crypt: CryptConfig?, object: String, limit: Int = maxSize) throws -> [UInt8] {
        let kind = try check(blob, object: object)
        var payload: [UInt8]
        if kind.isEncrypted {
            guard let crypt else { throw RepositoryError(.crypt, object, "blob is encrypted and no encryption key is configured") }
            do {
                payload = try crypt.decrypt(iv: UnsafeRawBufferPointer(rebasing: blob[12..<28]),
                                            tag: UnsafeRawBufferPointer(rebasing: blob[28..<44]),
                                            ciphertext: UnsafeRawBufferPointer(rebasing: blob[44...]))
            } catch let e as RepositoryError {
                throw RepositoryError(.crypt, object, e.message)
            }
        } else {
            payload = Array(blob[12...])
        }
        guard kind.isCompressed else { return payload }
        do {
            return try payload.withUnsafeBytes { try Zstd.decompress($0, limit: limit) }
        } catch {
            throw RepositoryError(.corrupt, object, "cannot decompress: \(error)")
        }
    }

    public static func decode(_ blob: [UInt8], crypt: CryptConfig?, object: String, limit: Int = maxSize) throws -> [UInt8] {
        try blob.withUnsafeBytes { try decode($0, crypt: crypt, object: object, limit: limit) }
    }

    /// A chunk's zstd payload is written as independent frames of this much
    /// plaintext each (the last one shorter), one after the other: a
    /// standard multi-frame zstd stream, which PBS's reader (`zstd::stream::
    /// decode_all`, every frame up to the end) and every restore here decode
    /// as one. An incremental backup that patches a chunk then recompresses
    /// only the frames its changes touch and copies the others' compressed
    /// bytes from the previous chunk (`Encoder.encode(_:reusing:)`). 1 MiB:
    /// measured on the real-data disk, 0.5 % less compression than one 4 MiB
    /// frame and 7 % slower zstd; 256 KiB frames cost 18 %, 512 KiB 1.1 %.
    static let frameSize = 1 << 20

    /// The compressed frames of a previous chunk's blob, for `Encoder.encode(_:reusing:)`:
    /// `payload` (the zstd stream, verified) and where each frame ends in it.
    struct Frames {
        let payload: UnsafeRawBufferPointer
        let ends: [Int]

        /// The frames of `payload` when it is cut as `Encoder` cuts a chunk of
        /// `length` bytes (every frame `frameSize` of plaintext, its content
        /// size in its header); nil for any other layout (a single-frame blob
        /// of an older snapdump or of PBS).
        init?(payload: UnsafeRawBufferPointer, length: Int) {
            guard let base = payload.baseAddress, length > 0 else { return nil }
            let count = (length + DataBlob.frameSize - 1) / DataBlob.frameSize
            var ends: [Int] = []
            ends.reserveCapacity(count)
            var at = 0
            for k in 0..<count {
                let plain = min(DataBlob.frameSize, length - k * DataBlob.frameSize)
                guard at < payload.count, ZSTD_getFrameContentSize(base + at, payload.count - at) == UInt64(plain) else { return nil }
                let n = ZSTD_findFrameCompressedSize(base + at, payload.count - at)
                guard ZSTD_isError(n) == 0, n > 0 else { return nil }
                at += n
                ends.append(at)
            }
            guard at == payload.count else { return nil }
            self.payload = payload
            self.ends = ends
        }

        func frame(_ k: Int) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: payload[(k == 0 ? 0 : ends[k - 1])..<ends[k]])
        }
    }

    /// One thread's blob encoding of chunks up to `capacity` bytes, reusing
    /// its zstd context and output buffer from chunk to chunk (`encode`
    /// allocates both per call: a zero-filled 4 MiB array and a context
    /// with its tables, as much CPU as a level-1 compression of the chunk).
    /// Encrypted blobs go through `encode`.
    final class Encoder {
        private let context: OpaquePointer
        private let memory: ChunkMemory
        private var buffer: UnsafeMutableRawBufferPointer { memory.bytes }
        private let capacity: Int

        init(capacity: Int) {
            self.capacity = capacity
            context = ZSTD_createCCtx()!
            ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, 1)
            // Page-aligned: the chunk store writes a blob's whole pages with O_DIRECT.
            let frames = (capacity + DataBlob.frameSize - 1) / DataBlob.frameSize
            memory = ChunkMemory(byteCount: 12 + max(frames * ZSTD_compressBound(DataBlob.frameSize), capacity))
        }

        deinit {
            ZSTD_freeCCtx(context)
        }

        /// The unencrypted blob of `data` (zstd level 1, in `frameSize` frames,
        /// when smaller), valid until the next call.
        func encode(_ data: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
            encode(data, reusing: nil, changed: { _ in true })!
        }

        /// As `encode(_:)`, but frame `k` is copied from `previous` (the
        /// verified blob of the chunk `data` was patched from) unless
        /// `changed(k)`: its plaintext is then the previous chunk's, which
        /// those compressed bytes decode to. nil, with `plainAllowed` false,
        /// where the blob would be stored uncompressed (a copy of `data`
        /// whole): the caller did not fill in the frames it copies.
        func encode(_ data: UnsafeRawBufferPointer, reusing previous: Frames?, changed: (Int) -> Bool,
                    plainAllowed: Bool = true) -> UnsafeRawBufferPointer? {
            precondition(data.count <= capacity)
            let out = buffer.baseAddress!
            let frames = (data.count + DataBlob.frameSize - 1) / DataBlob.frameSize
            let reuse = previous.map { $0.ends.count == frames } ?? false
            var length = 0
            var compressed = data.count > 0
            for k in 0..<frames where compressed {
                let start = k * DataBlob.frameSize
                let plain = min(DataBlob.frameSize, data.count - start)
                if reuse, let previous, !changed(k) {
                    let f = previous.frame(k)
                    guard 12 + length + f.count <= buffer.count else { compressed = false; break }
                    (out + 12 + length).copyMemory(from: f.baseAddress!, byteCount: f.count)
                    length += f.count
                    continue
                }
                let n = ZSTD_compress2(context, out + 12 + length, buffer.count - 12 - length, data.baseAddress! + start, plain)
                if ZSTD_isError(n) != 0 { compressed = false; break }
                length += n
            }
            let kind: Kind
            if compressed, length < data.count {
                kind = .zstd
            } else {
                guard plainAllowed else { return nil }
                kind = .plain
                length = data.count
                if length > 0 { (out + 12).copyMemory(from: data.baseAddress!, byteCount: length) }
            }
            kind.magic.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: 8) }
            let crc = DataBlob.crc32(UnsafeRawBufferPointer(start: out + 12, count: length))
            withUnsafeBytes(of: crc.littleEndian) { (out + 8).copyMemory(from: $0.baseAddress!, byteCount: 4) }
            return UnsafeRawBufferPointer(start: out, count: 12 + length)
        }
    }

    static func crc32(_ b: UnsafeRawBufferPointer) -> UInt32 { CRC32.checksum(b) }

    private static func hex32(_ v: UInt32) -> String { String(v, radix: 16).leftPadded(8) }
}

