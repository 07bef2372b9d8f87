import Foundation
import COpenSSL
import SnapdumpSystem

/// An encryption key file, shaped like PBS's key config (JSON): the 32-byte
/// key, either stored as is (`kdf: null`, for unattended backups: the file is
/// root-only) or encrypted with AES-256-GCM under a key derived from a
/// passphrase with scrypt (n=65536, r=8, p=1, 32-byte salt).
///
///     {"kdf": {"scrypt": {"n":65536,"r":8,"p":1,"salt":"<base64>"}} | null,
///      "created": "…Z", "modified": "…Z",
///      "data": "<base64: key, or iv[16] ‖ tag[16] ‖ encrypted key>",
///      "fingerprint": "aa:bb:…"}
public struct KeyFile: Codable, Sendable {
    public struct Scrypt: Codable, Sendable {
        public var n: UInt64
        public var r: UInt64
        public var p: UInt64
        public var salt: String
    }
    public struct KDF: Codable, Sendable {
        public var scrypt: Scrypt
    }

    public var kdf: KDF?
    public var created: String
    public var modified: String
    public var data: String
    public var fingerprint: String

    /// A new random key; with a passphrase, protected by scrypt.
    public static func create(passphrase: String?) throws -> (KeyFile, CryptConfig) {
        let key = try Random.bytes(32)
        let crypt = CryptConfig(encKey: key)
        let now = SnapshotName.formatTime(Int64(Date().timeIntervalSince1970))
        guard let passphrase else {
            return (KeyFile(kdf: nil, created: now, modified: now, data: Data(key).base64EncodedString(), fingerprint: crypt.fingerprint), crypt)
        }
        guard passphrase.utf8.count >= 5 else { throw RepositoryError(.invalidArgument, "passphrase", "too short (at least 5 characters)") }
        let salt = try Random.bytes(32)
        let s = Scrypt(n: 65536, r: 8, p: 1, salt: Data(salt).base64EncodedString())
        let wrap = CryptConfig(encKey: try derive(passphrase, s))
        let sealed = try key.withUnsafeBytes { try wrap.encrypt($0) }
        return (KeyFile(kdf: KDF(scrypt: s), created: now, modified: now,
                        data: Data(sealed.iv + sealed.tag + sealed.ciphertext).base64EncodedString(), fingerprint: crypt.fingerprint), crypt)
    }

    public var needsPassphrase: Bool { kdf != nil }

    /// The key; `passphrase` is needed when the file is protected.
    public func open(passphrase: String?, object: String) throws -> CryptConfig {
        guard let raw = Data(base64Encoded: data).map(Array.init) else { throw RepositoryError(.format, object, "'data' is not base64") }
        let key: [UInt8]
        if let kdf {
            guard let passphrase else {
                throw RepositoryError(.crypt, object, "key file is protected by a passphrase (set SNAPDUMP_ENCRYPTION_PASSWORD)")
            }
            guard raw.count == 16 + 16 + 32 else { throw RepositoryError(.format, object, "'data' has \(raw.count) bytes, expected 64") }
            let wrap = CryptConfig(encKey: try Self.derive(passphrase, kdf.scrypt))
            do {
                key = try raw.withUnsafeBytes { b in
                    try wrap.decrypt(iv: UnsafeRawBufferPointer(rebasing: b[0..<16]), tag: UnsafeRawBufferPointer(rebasing: b[16..<32]),
                                     ciphertext: UnsafeRawBufferPointer(rebasing: b[32...]))
                }
            } catch {
                throw RepositoryError(.crypt, object, "wrong passphrase (or the key file was changed)")
            }
        } else {
            guard raw.count == 32 else { throw RepositoryError(.format, object, "'data' has \(raw.count) bytes, expected a 32-byte key") }
            key = raw
        }
        let crypt = CryptConfig(encKey: key)
        guard crypt.fingerprint == fingerprint else {
            throw RepositoryError(.crypt, object, "fingerprint mismatch (file says \(fingerprint), key is \(crypt.fingerprint))")
        }
        return crypt
    }

    static func derive(_ passphrase: String, _ s: Scrypt) throws -> [UInt8] {
        guard let salt = Data(base64Encoded: s.salt).map(Array.init) else { throw RepositoryError(.format, "key file", "scrypt salt is not base64") }
        guard s.n >= 2, s.n <= 1 << 20, s.n & (s.n - 1) == 0, s.r >= 1, s.r <= 32, s.p >= 1, s.p <= 16 else {
            throw RepositoryError(.format, "key file", "scrypt parameters out of range (n=\(s.n), r=\(s.r), p=\(s.p))")
        }
        var out = [UInt8](repeating: 0, count: 32)
        let pass = Array(passphrase.utf8)
        let ok = pass.withUnsafeBufferPointer { p in
            EVP_PBE_scrypt(UnsafeRawPointer(p.baseAddress!).assumingMemoryBound(to: CChar.self), p.count, salt, salt.count,
                           s.n, s.r, s.p, 1 << 30, &out, 32)
        }
        guard ok == 1 else { throw RepositoryError(.crypt, "key file", "scrypt failed") }
        return out
    }

    public static func load(_ path: String) throws -> KeyFile {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch { throw RepositoryError.io(path, "cannot read key file", error) }
        do { return try JSONDecoder().decode(KeyFile.self, from: Data(bytes)) } catch {
            throw RepositoryError(.format, path, "not a key file: \(error)")
        }
    }

    /// Loads and opens a key file; the passphrase comes from SNAPDUMP_ENCRYPTION_PASSWORD.
    public static func crypt(from path: String) throws -> CryptConfig {
        try load(path).open(passphrase: ProcessInfo.processInfo.environment["SNAPDUMP_ENCRYPTION_PASSWORD"], object: path)
    }

    /// Writes the file root-only; refuses to replace an existing one.
    public func save(_ path: String) throws {
        if FileSystem.exists(path) { throw RepositoryError(.exists, path, "exists already (not overwritten)") }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do { try FileSystem.writeAtomically(path, bytes: Array(try enc.encode(self)) + [10], mode: 0o600) } catch {
            throw RepositoryError.io(path, "cannot write key file", error)
        }
    }
}
