import Foundation
import SnapdumpSystem
import Archive

/// A fixed index (`<disk>.img.fidx`, PBS `fixed_index.rs`): the digests of a
/// disk's chunks in order, all chunks `chunkSize` bytes except the last.
///
///     0     magic[8]   [47,127,65,237,145,253,15,205]
///     8     uuid[16]
///     24    ctime i64 LE (Unix seconds)
///     32    index_csum[32] = SHA-256(d0 ‖ d1 ‖ …)
///     64    size u64 LE    (bytes of the disk)
///     72    chunk_size u64 LE
///     80    reserved[4016], zero
///     4096  digest[32] × ⌈size / chunk_size⌉
public struct FixedIndex: Sendable, Equatable {
    public static let magic: [UInt8] = [47, 127, 65, 237, 145, 253, 15, 205]
    public static let headerSize = 4096
    /// PBS's server hard-codes 4 MiB; so does snapdump's DeviceDigest.
    public static let defaultChunkSize: UInt64 = 4 * 1024 * 1024

    public var uuid: [UInt8]
    public var ctime: Int64
    public var size: UInt64
    public var chunkSize: UInt64
    public var digests: [SHA256Digest]

    public init(uuid: [UInt8], ctime: Int64, size: UInt64, chunkSize: UInt64 = defaultChunkSize, digests: [SHA256Digest]) {
        precondition(uuid.count == 16 && chunkSize > 0)
        precondition(digests.count == Self.chunkCount(size: size, chunkSize: chunkSize), "digest count does not match size")
        self.uuid = uuid
        self.ctime = ctime
        self.size = size
        self.chunkSize = chunkSize
        self.digests = digests
    }

    public static func chunkCount(size: UInt64, chunkSize: UInt64 = defaultChunkSize) -> Int {
        Int((size + chunkSize - 1) / chunkSize)
    }

    public var chunkCount: Int { digests.count }

    /// Byte length of chunk `i` (the last may be short).
    public func chunkLength(_ i: Int) -> Int {
        Int(min(chunkSize, size - UInt64(i) * chunkSize))
    }

    /// SHA-256 over the digests in order (the header's index_csum).
    public var indexChecksum: SHA256Digest {
        digests.withUnsafeBytes { SHA256.digest($0) }
    }

    /// The file's bytes.
    public func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.headerSize + 32 * digests.count)
        out.withUnsafeMutableBytes { b in
            for i in 0..<8 { b[i] = Self.magic[i] }
            for i in 0..<16 { b[8 + i] = uuid[i] }
            b.storeBytes(of: ctime.littleEndian, toByteOffset: 24, as: Int64.self)
            let csum = indexChecksum.bytes
            for i in 0..<32 { b[32 + i] = csum[i] }
            b.storeBytes(of: size.littleEndian, toByteOffset: 64, as: UInt64.self)
            b.storeBytes(of: chunkSize.littleEndian, toByteOffset: 72, as: UInt64.self)
            digests.withUnsafeBytes { d in
                UnsafeMutableRawBufferPointer(rebasing: b[Self.headerSize...]).copyMemory(from: d)
            }
        }
        return out
    }

    /// Parses and checks a file's bytes: magic, length = 4096 + 32 n with n
    /// matching size and chunk size, and the index checksum. `object` names the file in errors.
    public init(decoding bytes: [UInt8], object: String) throws {
        guard bytes.count >= Self.headerSize, Array(bytes[0..<8]) == Self.magic else {
            throw RepositoryError(.format, object, "not a fixed index (bad magic or shorter than its header)")
        }
        let (ctime, csum, size, chunkSize): (Int64, [UInt8], UInt64, UInt64) = bytes.withUnsafeBytes { b in
            (Int64(littleEndian: b.loadUnaligned(fromByteOffset: 24, as: Int64.self)), Array(b[32..<64]),
             UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 64, as: UInt64.self)),
             UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 72, as: UInt64.self)))
        }
        guard chunkSize > 0, chunkSize <= UInt64(DataBlob.maxSize) else {
            throw RepositoryError(.format, object, "invalid chunk size \(chunkSize)")
        }
        let body = bytes.count - Self.headerSize
        guard body % 32 == 0, body / 32 == Self.chunkCount(size: size, chunkSize: chunkSize) else {
            throw RepositoryError(.corrupt, object, "length \(bytes.count) does not hold the \(Self.chunkCount(size: size, chunkSize: chunkSize)) digests of a \(size)-byte disk")
        }
        var digests: [SHA256Digest] = []
        digests.reserveCapacity(body / 32)
        for i in 0..<body / 32 {
            let o = Self.headerSize + 32 * i
            digests.append(SHA256Digest(bytes: bytes[o..<o + 32])!)
        }
        self.init(uuid: Array(bytes[8..<24]), ctime: ctime, size: size, chunkSize: chunkSize, digests: digests)
        guard indexChecksum.bytes == csum else {
            throw RepositoryError(.corrupt, object, "index checksum mismatch (the digest list was changed)")
        }
    }

    public static func read(_ path: String) throws -> FixedIndex {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch { throw RepositoryError.io(path, "cannot read index", error) }
        return try FixedIndex(decoding: bytes, object: path)
    }

    /// Writes `<path>.tmp_fidx`, fsyncs it and renames it to `path`.
    public func write(to path: String) throws {
        let tmp = path.replacingSuffix(".fidx", with: ".tmp_fidx")
        do {
            let f = try File.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
            try f.writeAll(encoded())
            try f.sync()
            try f.close()
            try FileSystem.rename(tmp, to: path)
        } catch {
            try? FileSystem.remove(tmp)
            throw RepositoryError.io(path, "cannot write index", error)
        }
    }
}

extension String {
    func replacingSuffix(_ suffix: String, with new: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) + new : self + new
    }
}
