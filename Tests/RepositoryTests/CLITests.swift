import Foundation
import Testing
import SnapdumpSystem
import TestSupport
@testable import Repository
import Archive

/// `snapdump storage add repo`, `repo …` through the real binary.
@Suite(.serialized) struct RepoCLITests {
    final class Sandbox {
        let scratch: Scratch
        var configDir: String { scratch.path("cfg") }
        init(_ label: String) throws {
            scratch = try Scratch("cli-\(label)")
            try FileSystem.createDirectory(scratch.path("cfg"))
        }
        func run(_ args: [String], env: [String: String] = [:]) throws -> SnapdumpBinary.Result {
            // vma and repo key work on files only: no --config-dir.
            let files = args.first == "vma" || args.starts(with: ["repo", "key"])
            return try SnapdumpBinary.run(args, configDir: files ? nil : configDir, environment: env)
        }
        @discardableResult
        func ok(_ args: [String], env: [String: String] = [:]) throws -> String {
            let r = try run(args, env: env)
            guard r.status == 0 else { throw TestFailure("snapdump \(args.joined(separator: " ")) failed: \(r)") }
            return r.stdout
        }
    }

    /// A zstd VMA of VM 100: one 13 MiB disk (data, zeros, data) and a config.
    func makeArchive(_ path: String, content: [UInt8]) throws {
        let dev = VMADevice(id: 1, name: "drive-scsi0", size: UInt64(content.count))
        let w = try VMAWriter(path: path + ".dat", ctime: 1_796_004_000, devices: [dev],
                              configs: [VMAConfigBlob(name: "qemu-server.conf", data: Array("memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=13M\n".utf8))],
                              reservedMetadataSize: SnapdumpMetadata.reservedSize(deviceCount: 1), compression: .zstd(level: 3, workers: 0))
        try content.withUnsafeBytes { b in
            var c = 0
            while c * VMAFormat.clusterSize < b.count {
                let lo = c * VMAFormat.clusterSize, hi = min(lo + VMAFormat.clusterSize, b.count)
                try w.addCluster(device: 1, cluster: UInt32(c), data: UnsafeRawBufferPointer(rebasing: b[lo..<hi]))
                c += 1
            }
        }
        let digest = content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }
        let meta = SnapdumpMetadata(devices: [.init(name: "drive-scsi0", size: dev.size, sha256: digest)], mode: "snapshot",
                                    downtimeMs: 12, startTime: 1_796_004_000, snapdumpVersion: "test")
        try w.finish(snapdumpJSON: try meta.encoded())
        try w.commit(to: path)
    }

    func content() -> [UInt8] {
        pseudoRandom(5 << 20, seed: 42) + [UInt8](repeating: 0, count: 4 << 20) + pseudoRandom((4 << 20) + 3 * 512, seed: 43)  // a short last chunk, whole sectors
    }

    @Test func importExportRoundTripAndStatus() throws {
        let sb = try Sandbox("roundtrip")
        let store = sb.scratch.path("store")
        try sb.ok(["storage", "add", "repo", "r1", "--path", store])
        #expect(try FileSystem.readText(sb.configDir + "/storage.cfg").contains("repo: r1"))
        try sb.ok(["repo", "init", "r1"])
        let archive = sb.scratch.path("vzdump-qemu-100-2026_11_30-02_00_00.vma.zst")
        let data = content()
        try makeArchive(archive, content: data)
        let vol = try sb.ok(["repo", "import", "r1", archive]).split(separator: "\n").last.map(String.init)
        #expect(vol == "r1:backup/vm/100/2026-11-30T02:00:00Z")
        // A second import of the same data stores no new chunk.
        let again = try sb.ok(["repo", "import", "r1", archive, "--vmid", "101"])
        #expect(again.contains("0 new chunks"))
        let status = try sb.ok(["repo", "status", "r1"])
        #expect(status.contains("snapshots: 2") && status.contains("guests: 2"))
        let factor = status.split(separator: "\n").first { $0.hasPrefix("deduplication factor: ") }
            .flatMap { Double($0.dropFirst("deduplication factor: ".count)) }
        #expect((factor ?? 0) >= 2, "two backups of the same data: factor ≥ 2 (also compressed), got \(status)")
        let list = try sb.ok(["backup", "list", "r1", "--vmid", "100"])
        #expect(list.contains("r1:backup/vm/100/2026-11-30T02:00:00Z") && !list.contains("vm/101/"), "\(list)")
        #expect(try sb.ok(["backup", "list", "r1"]).contains("r1:backup/vm/101/2026-11-30T02:00:00Z"))
        // prune works on the repository's snapshots (one per guest here: kept), never on a dump directory in it.
        let b = try sb.run(["prune", "r1", "--vmid", "100", "--keep-last", "1", "--dry-run"])
        #expect(b.status == 0 && b.stdout.contains("r1:backup/vm/100/2026-11-30T02:00:00Z") && b.stdout.contains("keep"), "\(b)")
        #expect(!FileSystem.exists(store + "/dump"))
        // Export and check the archive with the VMA tools: same disk, same config.
        let out = sb.scratch.path("export.vma.zst")
        try sb.ok(["repo", "export", "r1:backup/vm/100/2026-11-30T02:00:00Z", "--vma", out])
        // snapdump.json came along (mode kept), its digest rebuilt from the index: checked by vma verify.
        let verified = try sb.ok(["vma", "verify", out])
        #expect(verified.contains("device 1: sha256 ") && verified.contains("OK"), "\(verified)")
        try sb.ok(["vma", "extract", out, sb.scratch.path("x")])
        #expect(try FileSystem.readBytes(sb.scratch.path("x/disk-drive-scsi0.raw")) == data)
        #expect(try FileSystem.readText(sb.scratch.path("x/qemu-server.conf")).contains("memory: 256"))
        // verify clean; gc with nothing to remove.
        #expect(try sb.ok(["repo", "verify", "r1"]).contains("verified 2 snapshot(s)"))
        #expect(try sb.ok(["repo", "gc", "r1"]).contains("removed: 0 chunks"))
    }

    @Test func encryptedRepositoryThroughTheCLI() throws {
        let sb = try Sandbox("crypt")
        let key = sb.scratch.path("enc.key")
        let pw = ["SNAPDUMP_ENCRYPTION_PASSWORD": "secret passphrase"]
        let fp = try sb.ok(["repo", "key", "create", key, "--kdf", "scrypt"], env: pw)
        #expect(fp.hasPrefix("fingerprint: "))
        #expect(try sb.ok(["repo", "key", "show", key], env: pw).contains(fp.trimmingCharacters(in: .whitespacesAndNewlines)))
        let wrong = try sb.run(["repo", "key", "show", key], env: ["SNAPDUMP_ENCRYPTION_PASSWORD": "nope nope"])
        #expect(wrong.status != 0 && wrong.errorLines.count == 1 && wrong.stderr.contains("wrong passphrase"))
        try sb.ok(["storage", "add", "repo", "enc", "--path", sb.scratch.path("store"), "--encryption-key", key], env: pw)
        try sb.ok(["repo", "init", "enc"], env: pw)
        let archive = sb.scratch.path("vzdump-qemu-100-2026_11_30-02_00_00.vma.zst")
        try makeArchive(archive, content: content())
        try sb.ok(["repo", "import", "enc", archive], env: pw)
        // Every chunk file is an encrypted blob.
        let repo = try Repository(root: sb.scratch.path("store"))
        for (d, _) in try repo.chunks.allChunks() {
            #expect(DataBlob.Kind(magic: try repo.chunks.read(d))!.isEncrypted)
        }
        #expect(try sb.ok(["repo", "verify", "enc"], env: pw).contains("verified 1 snapshot(s)"))
        let out = sb.scratch.path("e.vma.zst")
        try sb.ok(["repo", "export", "enc:backup/vm/100/2026-11-30T02:00:00Z", "--vma", out], env: pw)
        try sb.ok(["vma", "extract", out, sb.scratch.path("x")])
        #expect(try FileSystem.readBytes(sb.scratch.path("x/disk-drive-scsi0.raw")) == content())
        // Without the passphrase: one clear error.
        let r = try sb.run(["repo", "verify", "enc"])
        #expect(r.status != 0 && r.errorLines.count == 1 && r.stderr.contains("SNAPDUMP_ENCRYPTION_PASSWORD"))
    }

    @Test func badInputGivesOneErrorLineAndChangesNothing() throws {
        let sb = try Sandbox("bad")
        try sb.ok(["storage", "add", "dir", "local", "--path", sb.scratch.dir])
        for (args, needle) in [
            (["repo", "status", "nosuch"], "'nosuch' does not exist"),
            (["repo", "init", "local"], "not a repository"),
            (["storage", "add", "repo", "r", "--path", "/x", "--content", "images"], "content 'backup' only"),
            (["storage", "add", "dir", "d2", "--path", "/tmp", "--encryption-key", "/k"], "repo storages only"),
            (["storage", "add", "repo", "r", "--path", "/tmp/x", "--encryption-key", "/nonexistent.key"], "/nonexistent.key"),
            (["repo", "export", "local:backup/vm/100/2026-13-01T00:00:00Z", "--vma", "/tmp/x.vma.zst"], "invalid snapshot"),
        ] {
            let before = try FileSystem.readText(sb.configDir + "/storage.cfg")
            let r = try sb.run(args)
            #expect(r.status != 0, "\(args) succeeded")
            #expect(r.errorLines.first?.hasPrefix("Error:") == true && r.stderr.contains(needle), "\(args): \(r)")
            #expect(try FileSystem.readText(sb.configDir + "/storage.cfg") == before)
        }
        try sb.ok(["storage", "add", "repo", "r1", "--path", sb.scratch.path("store")])
        let r = try sb.run(["repo", "verify", "r1"])
        #expect(r.status != 0 && r.stderr.contains("not a repository"))
    }
}
