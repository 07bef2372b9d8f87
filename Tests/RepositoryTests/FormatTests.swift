import Foundation
import Testing
import SnapdumpSystem
@testable import Repository
import Archive

/// Byte layouts against the documented PBS formats, checked against
/// independent implementations (python's zlib/hashlib/cryptography, the zstd CLI).
@Suite struct FormatTests {
    @Test func plainBlobGoldenBytes() throws {
        // "hello" does not compress: magic(plain) ‖ crc32("hello") LE ‖ data.
        let blob = try DataBlob.encode(Array("hello".utf8))
        #expect(blob == [66, 171, 56, 7, 190, 131, 112, 161] + [0x86, 0xa6, 0x10, 0x36] + Array("hello".utf8))
        #expect(try DataBlob.decode(blob, crypt: nil, object: "t") == Array("hello".utf8))
    }

    @Test func zstdBlobIsReadableByTheZstdTool() throws {
        let data = pseudoRandom(1 << 20, seed: 1)
        let blob = try DataBlob.encode(data)
        #expect(Array(blob[0..<8]) == [49, 185, 88, 66, 111, 182, 163, 127])
        #expect(blob.count < data.count)
        let scratch = try Scratch("zstd")
        let payload = scratch.path("payload.zst")
        try FileSystem.writeAtomically(payload, bytes: Array(blob[12...]))
        _ = try Command.run(["zstd", "-q", "-d", payload, "-o", scratch.path("out")])
        #expect(try FileSystem.readBytes(scratch.path("out")) == data)
        // CRC over everything after the 12-byte header, as python's zlib computes it.
        let crc = try python("import sys,zlib; d=open(sys.argv[1],'rb').read(); print(zlib.crc32(d))", [payload])
        #expect(UInt32(crc) == blob.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) })
    }

    /// A chunk blob is a standard multi-frame zstd payload of 1 MiB frames,
    /// read whole by the zstd tool (PBS's `decode_all` reads every frame the
    /// same way), `DataBlob.decode` and the restore's decoder; a patched
    /// chunk's blob copies the untouched frames of its previous blob byte for byte.
    @Test func chunkBlobIsFramesAndAPatchedBlobCopiesTheUntouchedOnes() throws {
        let data = pseudoRandom(4 << 20, seed: 21)
        let encoder = DataBlob.Encoder(capacity: 4 << 20)
        let blob = data.withUnsafeBytes { Array(encoder.encode($0)) }
        #expect(DataBlob.Kind(magic: blob) == .zstd)
        let frames = try #require(blob.withUnsafeBytes { DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: $0[12...]), length: data.count) })
        #expect(frames.ends.count == 4 && frames.ends.last == blob.count - 12)
        #expect(try DataBlob.decode(blob, crypt: nil, object: "t") == data)
        let scratch = try Scratch("frames")
        try FileSystem.writeAtomically(scratch.path("p.zst"), bytes: Array(blob[12...]))
        _ = try Command.run(["zstd", "-q", "-d", scratch.path("p.zst"), "-o", scratch.path("out")])
        #expect(try FileSystem.readBytes(scratch.path("out")) == data)
        let repo = try Repository.create(root: scratch.path("store"))
        let digest = SHA256.digest(data)
        _ = try repo.chunks.insert(digest, blob: blob)
        let decoder = ChunkDecoder(capacity: 4 << 20)
        let reader = ChunkReader(repository: repo, snapshot: SnapshotName(id: "1", time: 1_796_004_000))
        #expect(Array(try decoder.decode(digest, expectedLength: data.count, from: reader)) == data)
        let verified = try #require(decoder.verifiedPayload)
        #expect(Array(verified) == Array(blob[12...]))

        // Frame 2 changed: recompressed; frames 0, 1, 3 copied from the previous blob.
        var patched = data
        for i in (2 << 20) + 5..<(2 << 20) + 70000 { patched[i] ^= 0x3C }
        let again = blob.withUnsafeBytes { old in
            let previous = DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: old[12...]), length: data.count)
            return patched.withUnsafeBytes { Array(encoder.encode($0, reusing: previous, changed: { $0 == 2 })!) }
        }
        #expect(try DataBlob.decode(again, crypt: nil, object: "t") == patched)
        let newFrames = try #require(again.withUnsafeBytes { DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: $0[12...]), length: data.count) })
        for k in [0, 1, 3] { #expect(Array(newFrames.frame(k)) == Array(frames.frame(k)), "frame \(k)") }
        #expect(Array(newFrames.frame(2)) != Array(frames.frame(2)))
        // A fresh encoding of the patched data is the same blob: copying changes nothing of the format.
        #expect(patched.withUnsafeBytes { Array(encoder.encode($0)) } == again)

        // A single-frame payload (older snapdump, PBS) offers no frames to copy.
        let single = try DataBlob.encode(data)
        #expect(single.withUnsafeBytes { DataBlob.Frames(payload: UnsafeRawBufferPointer(rebasing: $0[12...]), length: data.count) } == nil)
    }

    @Test func blobKeptUncompressedWhenZstdDoesNotHelp() throws {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let blob = try DataBlob.encode(data)
        #expect(DataBlob.Kind(magic: blob) == .plain)
        #expect(blob.count == data.count + 12)
    }

    @Test func flippedByteIsACRCError() throws {
        var blob = try DataBlob.encode(pseudoRandom(10000, seed: 2))
        blob[100] ^= 0x01
        #expect { try DataBlob.decode(blob, crypt: nil, object: "chunk x") } throws: { e in
            let r = e as! RepositoryError
            return r.code == .corrupt && r.description.contains("chunk x") && r.description.contains("CRC")
        }
    }

    @Test func fixedIndexGoldenLayout() throws {
        let d0 = SHA256Digest(bytes: [UInt8](repeating: 0, count: 32))!
        let d1 = SHA256Digest(bytes: [UInt8](repeating: 1, count: 32))!
        let uuid = Array(0..<16).map(UInt8.init)
        let idx = FixedIndex(uuid: uuid, ctime: 0x0102030405060708, size: 4 * 1024 * 1024 + 5, chunkSize: 4 * 1024 * 1024, digests: [d0, d1])
        let b = idx.encoded()
        #expect(b.count == 4096 + 64)
        #expect(Array(b[0..<8]) == [47, 127, 65, 237, 145, 253, 15, 205])
        #expect(Array(b[8..<24]) == uuid)
        #expect(Array(b[24..<32]) == [8, 7, 6, 5, 4, 3, 2, 1])
        // SHA-256(d0 ‖ d1) computed with python's hashlib.
        #expect(SHA256Digest(bytes: b[32..<64])!.hex == "5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3")
        #expect(Array(b[64..<72]) == [5, 0, 64, 0, 0, 0, 0, 0])
        #expect(Array(b[72..<80]) == [0, 0, 64, 0, 0, 0, 0, 0])
        #expect(b[80..<4096].allSatisfy { $0 == 0 })
        #expect(Array(b[4096..<4128]) == d0.bytes && Array(b[4128..<4160]) == d1.bytes)
        #expect(try FixedIndex(decoding: b, object: "x") == idx)
    }

    @Test func fixedIndexRejectsBadLengthAndChangedDigest() throws {
        let d = SHA256Digest(bytes: [UInt8](repeating: 7, count: 32))!
        let b = FixedIndex(uuid: [UInt8](repeating: 0, count: 16), ctime: 1, size: 10, digests: [d]).encoded()
        #expect(throws: RepositoryError.self) { try FixedIndex(decoding: Array(b.dropLast()), object: "x") }
        var changed = b
        changed[4100] ^= 0xFF
        #expect { try FixedIndex(decoding: changed, object: "drive-scsi0.img.fidx") } throws: { e in
            (e as! RepositoryError).code == .corrupt && "\(e)".contains("drive-scsi0.img.fidx")
        }
    }

    @Test func keyedDigestAndIdKeyMatchPBSDerivation() throws {
        let crypt = CryptConfig(encKey: Array(0..<32).map(UInt8.init))
        // id_key = PBKDF2-HMAC-SHA256(key, "_id_key", 10); digest = SHA-256(data ‖ id_key) (python hashlib).
        #expect(crypt.idKey.map { String($0, radix: 16).leftPadded(2) }.joined() == "7c2c013efd07f3b25717a485263343cd4d292a4b65c200bb3b18ea227abe225c")
        let d = Array("hello".utf8).withUnsafeBytes { crypt.digest($0) }
        #expect(d.hex == "e34178a27b992c4a218599bf7f43ed50bc464a03d624d9092306fe2ed74d557e")
    }

    @Test func encryptedBlobDecryptsWithPythonCryptography() throws {
        let key = Array(0..<32).map(UInt8.init)
        let crypt = CryptConfig(encKey: key)
        let data = pseudoRandom(200_000, seed: 3)
        let blob = try DataBlob.encode(data, crypt: crypt)
        #expect(DataBlob.Kind(magic: blob) == .encryptedZstd)
        let scratch = try Scratch("enc")
        try FileSystem.writeAtomically(scratch.path("blob"), bytes: blob)
        // Independent reader: iv@12, tag@28, ciphertext@44, AES-256-GCM, then zstd.
        let script = """
        import sys, zlib, subprocess
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        b = open(sys.argv[1],'rb').read()
        assert zlib.crc32(b[12:]) == int.from_bytes(b[8:12],'little')
        plain = AESGCM(bytes(range(32))).decrypt(b[12:28], b[44:] + b[28:44], None)
        out = subprocess.run(['zstd','-d','-c'], input=plain, capture_output=True, check=True).stdout
        open(sys.argv[2],'wb').write(out)
        """
        _ = try python(script, [scratch.path("blob"), scratch.path("out")])
        #expect(try FileSystem.readBytes(scratch.path("out")) == data)
        #expect(try DataBlob.decode(blob, crypt: crypt, object: "t") == data)
        // Wrong key, and a changed ciphertext byte (CRC fixed up), both fail authentication.
        #expect(throws: RepositoryError.self) { try DataBlob.decode(blob, crypt: CryptConfig(encKey: [UInt8](repeating: 9, count: 32)), object: "t") }
        #expect(throws: RepositoryError.self) { try DataBlob.decode(blob, crypt: nil, object: "t") }
        var changed = blob
        changed[60] ^= 1
        let crc = changed.withUnsafeBytes { DataBlob.crc32(UnsafeRawBufferPointer(rebasing: $0[12...])) }
        withUnsafeBytes(of: crc.littleEndian) { c in for i in 0..<4 { changed[8 + i] = c[i] } }
        #expect { try DataBlob.decode(changed, crypt: crypt, object: "t") } throws: { ($0 as! RepositoryError).code == .crypt }
    }

    @Test func keyFileScryptRoundTrip() throws {
        let scratch = try Scratch("key")
        let (kf, crypt) = try KeyFile.create(passphrase: "correct horse")
        try kf.save(scratch.path("k.json"))
        let st = try File.openForReading(scratch.path("k.json"))
        _ = st
        var s = stat()
        stat(scratch.path("k.json"), &s)
        #expect(s.st_mode & 0o777 == 0o600)
        let loaded = try KeyFile.load(scratch.path("k.json"))
        #expect(loaded.kdf?.scrypt.n == 65536)
        #expect(try loaded.open(passphrase: "correct horse", object: "k").encKey == crypt.encKey)
        #expect { try loaded.open(passphrase: "wrong horse", object: "k.json") } throws: { "\($0)".contains("wrong passphrase") }
        #expect(throws: RepositoryError.self) { try loaded.open(passphrase: nil, object: "k") }
        #expect(throws: RepositoryError.self) { try kf.save(scratch.path("k.json")) }
        let (plainKF, plainCrypt) = try KeyFile.create(passphrase: nil)
        #expect(try plainKF.open(passphrase: nil, object: "k").encKey == plainCrypt.encKey)
    }

    @Test func snapshotNamesAndVolumes() throws {
        let s = try #require(SnapshotName(parsing: "vm/100/2026-11-30T02:00:00Z"))
        #expect(s.vmid == 100 && s.time == 1_796_004_000 && s.timeString == "2026-11-30T02:00:00Z")
        #expect(s.path == "vm/100/2026-11-30T02:00:00Z")
        #expect(SnapshotName(parsing: "vm/100/2026-02-31T02:00:00Z") == nil)
        #expect(SnapshotName(parsing: "vm/../2026-11-30T02:00:00Z") == nil)
        #expect(SnapshotName(parsing: "xx/100/2026-11-30T02:00:00Z") == nil)
        let v = try #require(RepositoryVolume(parsing: "repo1:backup/vm/100/2026-11-30T02:00:00Z"))
        #expect(v.storage == "repo1" && v.snapshot == s && v.description == "repo1:backup/vm/100/2026-11-30T02:00:00Z")
        #expect(RepositoryVolume(parsing: "repo1:vm-100-disk-0") == nil)
    }

    @Test func manifestSignatureCoversFilesNotUnprotected() throws {
        let crypt = CryptConfig(encKey: [UInt8](repeating: 3, count: 32))
        var m = Manifest(snapshot: SnapshotName(id: "100", time: 1000),
                         files: [.init(filename: "drive-scsi0.img.fidx", cryptMode: .encrypt, size: 10, csum: "ab")])
        try m.sign(crypt)
        var decoded = try Manifest(blob: try m.encodedBlob(), object: "m")
        try decoded.verifySignature(crypt, object: "m")
        decoded.unprotected.notes = "changed"
        try decoded.verifySignature(crypt, object: "m")
        decoded.files[0].size = 11
        #expect(throws: RepositoryError.self) { try decoded.verifySignature(crypt, object: "m") }
        // The JSON uses PBS's key names.
        let json = String(decoding: try DataBlob.decode(try m.encodedBlob(), crypt: nil, object: "m"), as: UTF8.self)
        for key in ["\"backup-type\"", "\"backup-id\"", "\"backup-time\"", "\"crypt-mode\"", "\"key-fingerprint\"", "\"signature\""] {
            #expect(json.contains(key), "\(key) missing")
        }
    }
}
