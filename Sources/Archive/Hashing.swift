import COpenSSL
import CShims

/// A SHA-256 value, stored inline (no heap allocation).
public struct SHA256Digest: Hashable, Sendable, CustomStringConvertible {
    var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0

    public init() {}

    /// From 32 raw bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        withUnsafeMutableBytes(of: &self) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
    }

    /// From 64 hex digits.
    public init?(hex: String) {
        guard let b = Hex.decode(hex) else { return nil }
        self.init(bytes: b)
    }

    public var bytes: [UInt8] { withUnsafeBytes(of: self) { Array($0) } }
    public var hex: String { withUnsafeBytes(of: self) { Hex.encode($0) } }
    public var description: String { hex }
}

/// A reusable OpenSSL EVP digest context (one per thread: not Sendable).
final class EVPHasher {
    private let ctx: OpaquePointer
    private let md: OpaquePointer

    private init(md: OpaquePointer) {
        // NULL only when malloc fails inside OpenSSL; Swift traps on its own
        // allocation failures too, so this is not worth a throwing init.
        guard let ctx = EVP_MD_CTX_new() else {
            fatalError("EVP_MD_CTX_new: out of memory")
        }
        self.ctx = ctx
        self.md = md
        reset()
    }

    static func sha256() -> EVPHasher { EVPHasher(md: EVP_sha256()) }
    static func md5() -> EVPHasher { EVPHasher(md: EVP_md5()) }

    deinit { EVP_MD_CTX_free(ctx) }

    func reset() {
        // Only fails on allocation failure inside OpenSSL.
        precondition(EVP_DigestInit_ex(ctx, md, nil) == 1, "EVP_DigestInit_ex failed")
    }

    func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(EVP_DigestUpdate(ctx, base, bytes.count) == 1, "EVP_DigestUpdate failed")
    }

    /// Writes the digest (16 bytes for MD5, 32 for SHA-256) to `out` and resets.
    func finish(into out: UnsafeMutableRawBufferPointer) {
        var len: UInt32 = 0
        precondition(EVP_DigestFinal_ex(ctx, out.baseAddress!.assumingMemoryBound(to: UInt8.self), &len) == 1,
                     "EVP_DigestFinal_ex failed")
        precondition(Int(len) <= out.count)
        reset()
    }

    func finishSHA256() -> SHA256Digest {
        var d = SHA256Digest()
        withUnsafeMutableBytes(of: &d) { finish(into: $0) }
        return d
    }
}

/// MD5 as VMA uses it for its header checksums.
public enum MD5 {
    /// MD5 of `bytes` (16 bytes).
    public static func digest(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let h = EVPHasher.md5()
        h.update(bytes)
        var out = [UInt8](repeating: 0, count: 16)
        out.withUnsafeMutableBytes { h.finish(into: $0) }
        return out
    }
}

/// SHA-256 of bytes, through OpenSSL.
public enum SHA256 {
    public static func digest(_ bytes: UnsafeRawBufferPointer) -> SHA256Digest {
        let h = EVPHasher.sha256()
        h.update(bytes)
        return h.finishSHA256()
    }

    public static func digest(_ bytes: [UInt8]) -> SHA256Digest {
        bytes.withUnsafeBytes { digest($0) }
    }
}

/// CRC-32 as zlib computes it (IEEE 802.3, reflected): PCLMULQDQ folding where
/// the CPU has it (CShims/CRC32.c), zlib's table code elsewhere and for short input.
public enum CRC32 {
    /// The CRC of `crc`'s bytes followed by `bytes` (`crc` 0 to start).
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return crc }
        return snapdump_crc32(crc, p, bytes.count)
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { update(0, bytes) }

    /// Whether this CPU takes the carry-less multiply path.
    public static var folds: Bool { snapdump_crc32_folds() != 0 }
}
