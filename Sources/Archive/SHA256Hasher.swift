import COpenSSL

/// SHA-256's chaining value, the eight 32-bit words h0…h7, after a whole
/// number of 64-byte blocks: with the length hashed so far it is everything
/// the hash of what follows depends on (Merkle–Damgård, FIPS 180-4 §6.2).
public struct SHA256State: Equatable, Sendable {
    public var words: SIMD8<UInt32>

    public init(words: SIMD8<UInt32>) { self.words = words }

    /// FIPS 180-4 §5.3.3: the state before any byte.
    public static let initial = SHA256State(words: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19])
}

/// SHA-256 fed in pieces, whose state can be taken at a 64-byte boundary and
/// a hash resumed from it. A value: a copy hashes on independently of the
/// original (the partial block travels in the copy), so strings with a common
/// prefix hash it once. OpenSSL's low-level SHA256_CTX, the one API that
/// exposes the state; the same SHA-NI code as its EVP SHA-256.
public struct SHA256Hasher {
    private var ctx = SHA256_CTX()
    /// Bytes hashed so far.
    public private(set) var length = 0

    public init() {
        SHA256_Init(&ctx)
    }

    /// Continues a hash whose first `length` bytes (a multiple of 64) left `state`.
    public init(resuming state: SHA256State, at length: Int) {
        precondition(length >= 0 && length % 64 == 0, "SHA-256 resumes only at a block boundary")
        SHA256_Init(&ctx)
        withUnsafeMutableBytes(of: &ctx.h) { h in
            for j in 0..<8 { h.storeBytes(of: state.words[j], toByteOffset: 4 * j, as: UInt32.self) }
        }
        let bits = UInt64(length) * 8
        ctx.Nl = UInt32(truncatingIfNeeded: bits)
        ctx.Nh = UInt32(truncatingIfNeeded: bits >> 32)
        ctx.num = 0
        self.length = length
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        SHA256_Update(&ctx, base, bytes.count)
        length += bytes.count
    }

    /// The state now; only at a block boundary (`length` a multiple of 64).
    public var state: SHA256State {
        precondition(length % 64 == 0, "SHA-256 state taken inside a block")
        var words = SIMD8<UInt32>()
        withUnsafeBytes(of: ctx.h) { h in
            for j in 0..<8 { words[j] = h.load(fromByteOffset: 4 * j, as: UInt32.self) }
        }
        return SHA256State(words: words)
    }

    /// The digest of everything hashed; the hasher is spent (copy it first to go on).
    public mutating func finish() -> SHA256Digest {
        var d = SHA256Digest()
        withUnsafeMutableBytes(of: &d) { _ = SHA256_Final($0.baseAddress!.assumingMemoryBound(to: UInt8.self), &ctx) }
        return d
    }
}
