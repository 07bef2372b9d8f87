import COpenSSL
import Archive

/// The keys of an encrypted repository, derived as PBS does: `encKey` (32
/// random bytes, from the key file) encrypts chunks with AES-256-GCM;
/// `idKey` = PBKDF2-HMAC-SHA256(encKey, "_id_key", 10 rounds) keys the chunk
/// digests and the manifest signature, so a digest reveals nothing about the
/// plaintext to someone without the key.
public struct CryptConfig: Sendable {
    public let encKey: [UInt8]
    public let idKey: [UInt8]

    public init(encKey: [UInt8]) {
        precondition(encKey.count == 32, "AES-256 needs a 32-byte key")
        self.encKey = encKey
        var id = [UInt8](repeating: 0, count: 32)
        let ok = encKey.withUnsafeBytes { k in
            PKCS5_PBKDF2_HMAC(k.baseAddress!.assumingMemoryBound(to: CChar.self), 32,
                              Array("_id_key".utf8), 7, 10, EVP_sha256(), 32, &id)
        }
        precondition(ok == 1, "PKCS5_PBKDF2_HMAC failed")
        idKey = id
    }

    /// Chunk digest: SHA-256(plaintext ‖ idKey) — the key last, so the digest
    /// cannot be extended without it.
    public func digest(_ data: UnsafeRawBufferPointer) -> SHA256Digest {
        let ctx = SHA256Context()
        ctx.update(data)
        idKey.withUnsafeBytes { ctx.update($0) }
        return ctx.finish()
    }

    /// Identifies the key without revealing it: the keyed digest of a fixed
    /// input, shown as PBS shows fingerprints (hex pairs joined by ':').
    public var fingerprint: String {
        let d = Array("snapdump key fingerprint v1".utf8).withUnsafeBytes { digest($0) }.bytes
        return d.map { b in String(b, radix: 16).leftPadded(2) }.joined(separator: ":")
    }

    /// HMAC-SHA256 with idKey (the manifest signature).
    public func authTag(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        _ = idKey.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                HMAC(EVP_sha256(), k.baseAddress, 32, d.baseAddress?.assumingMemoryBound(to: UInt8.self), d.count, &out, &len)
            }
        }
        return out
    }

    /// AES-256-GCM with a fresh random 16-byte IV and empty AAD: (iv, tag, ciphertext).
    func encrypt(_ plain: UnsafeRawBufferPointer) throws -> (iv: [UInt8], tag: [UInt8], ciphertext: [UInt8]) {
        let iv = try Random.bytes(16)
        var out = [UInt8](repeating: 0, count: plain.count + 16)
        var tag = [UInt8](repeating: 0, count: 16)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw RepositoryError(.crypt, "AES-256-GCM", "out of memory") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var outLen: Int32 = 0, finLen: Int32 = 0
        var ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil) == 1
            && EVP_CIPHER_CTX_ctrl(ctx, Int32(EVP_CTRL_GCM_SET_IVLEN), 16, nil) == 1
            && EVP_EncryptInit_ex(ctx, nil, nil, encKey, iv) == 1
        ok = ok && out.withUnsafeMutableBufferPointer { o in
            EVP_EncryptUpdate(ctx, o.baseAddress, &outLen, plain.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(plain.count)) == 1
                && EVP_EncryptFinal_ex(ctx, o.baseAddress! + Int(outLen), &finLen) == 1
        }
        ok = ok && EVP_CIPHER_CTX_ctrl(ctx, Int32(EVP_CTRL_GCM_GET_TAG), 16, &tag) == 1
        guard ok else { throw RepositoryError(.crypt, "AES-256-GCM", "encryption failed") }
        out.removeSubrange(Int(outLen + finLen)...)
        return (iv, tag, out)
    }

    /// Decrypts and authenticates; a wrong key or any changed byte fails.
    func decrypt(iv: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: ciphertext.count + 16)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw RepositoryError(.crypt, "AES-256-GCM", "out of memory") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var outLen: Int32 = 0, finLen: Int32 = 0
        var tagCopy = Array(tag)
        var ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil) == 1
            && EVP_CIPHER_CTX_ctrl(ctx, Int32(EVP_CTRL_GCM_SET_IVLEN), Int32(iv.count), nil) == 1
            && EVP_DecryptInit_ex(ctx, nil, nil, encKey, iv.baseAddress?.assumingMemoryBound(to: UInt8.self)) == 1
        ok = ok && out.withUnsafeMutableBufferPointer { o in
            EVP_DecryptUpdate(ctx, o.baseAddress, &outLen, ciphertext.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(ciphertext.count)) == 1
        }
        ok = ok && EVP_CIPHER_CTX_ctrl(ctx, Int32(EVP_CTRL_GCM_SET_TAG), 16, &tagCopy) == 1
        ok = ok && out.withUnsafeMutableBufferPointer { o in
            EVP_DecryptFinal_ex(ctx, o.baseAddress! + Int(outLen), &finLen) == 1
        }
        guard ok else { throw RepositoryError(.crypt, "AES-256-GCM", "authentication failed (wrong key or corrupt data)") }
        out.removeSubrange(Int(outLen + finLen)...)
        return out
    }
}

/// Incremental SHA-256 through OpenSSL (one per thread).
struct SHA256Context: ~Copyable {
    private let ctx: OpaquePointer
    init() {
        guard let c = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        precondition(EVP_DigestInit_ex(c, EVP_sha256(), nil) == 1)
        ctx = c
    }
    deinit { EVP_MD_CTX_free(ctx) }
    func update(_ b: UnsafeRawBufferPointer) {
        guard let p = b.baseAddress, b.count > 0 else { return }
        precondition(EVP_DigestUpdate(ctx, p, b.count) == 1)
    }
    func finish() -> SHA256Digest {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 0
        precondition(EVP_DigestFinal_ex(ctx, &out, &len) == 1)
        return SHA256Digest(bytes: out)!
    }
}

enum Random {
    static func bytes(_ n: Int) throws -> [UInt8] {
        var b = [UInt8](repeating: 0, count: n)
        guard RAND_bytes(&b, Int32(n)) == 1 else { throw RepositoryError(.crypt, "RAND_bytes", "no random bytes available") }
        return b
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
