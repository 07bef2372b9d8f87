import Foundation
import Testing
import SnapdumpSystem
import TestSupport
@testable import Repository
import Archive

/// Killed and starved writers: nothing half-written becomes visible, no
/// chunk is corrupt, gc takes the leftovers away.
@Suite(.serialized) struct ReliabilityTests {
    /// Incompressible bytes (SplitMix64 words).
    func noise(_ n: Int, seed: UInt64) -> [UInt8] {
        var s = seed
        var words = [UInt64](repeating: 0, count: (n + 7) / 8)
        for i in words.indices {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            words[i] = z ^ (z >> 31)
        }
        return words.withUnsafeBytes { Array($0.prefix(n)) }
    }

    func archive(_ path: String, _ content: [UInt8], ctime: Int64) throws {
        let w = try VMAWriter(path: path + ".dat", ctime: ctime, devices: [VMADevice(id: 1, name: "drive-scsi0", size: UInt64(content.count))],
                              configs: [VMAConfigBlob(name: "qemu-server.conf", data: Array("memory: 64\n".utf8))],
                              reservedMetadataSize: nil, compression: .none)
        try content.withUnsafeBytes { b in
            for c in 0..<(b.count + VMAFormat.clusterSize - 1) / VMAFormat.clusterSize {
                let lo = c * VMAFormat.clusterSize
                try w.addCluster(device: 1, cluster: UInt32(c), data: UnsafeRawBufferPointer(rebasing: b[lo..<min(lo + VMAFormat.clusterSize, b.count)]))
            }
        }
        try w.finish(snapdumpJSON: nil)
        try w.commit(to: path)
    }

    /// Every chunk file decodes and hashes to its name.
    func assertNoCorruptChunk(_ repo: Repository) throws {
        for (d, _) in try repo.chunks.allChunks() {
            let data = try DataBlob.decode(try repo.chunks.read(d), crypt: nil, object: d.hex)
            #expect(data.withUnsafeBytes { DeviceDigest.digest(of: $0) } == d, "chunk \(d.hex) is corrupt")
        }
    }

    func config(_ scratch: Scratch, store: String) throws -> String {
        let cfg = scratch.path("cfg")
        try FileSystem.createDirectory(cfg)
        let r = try SnapdumpBinary.run(["storage", "add", "repo", "r1", "--path", store], configDir: cfg)
        guard r.status == 0 else { throw TestFailure("storage add: \(r)") }
        let i = try SnapdumpBinary.run(["repo", "init", "r1"], configDir: cfg)
        guard i.status == 0 else { throw TestFailure("repo init: \(i)") }
        return cfg
    }

    @Test func sigkillMidBackup() throws {
        let scratch = try Scratch("kill")
        let store = scratch.path("store")
        let cfg = try config(scratch, store: store)
        let good = scratch.path("vzdump-qemu-100-2026_11_30-01_00_00.vma")
        try archive(good, noise(12 << 20, seed: 1), ctime: 1_796_000_400)
        #expect(try SnapdumpBinary.run(["repo", "import", "r1", good], configDir: cfg).status == 0)
        let repo = try Repository(root: store)
        let before = Set(try repo.chunks.allChunks().map(\.0))

        let big = scratch.path("vzdump-qemu-100-2026_11_30-02_00_00.vma")
        try archive(big, noise(400 << 20, seed: 2), ctime: 1_796_004_000)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: SnapdumpBinary.binary)
        p.arguments = ["repo", "import", "r1", big, "--config-dir", cfg]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Kill it once it has stored some chunks of the new data.
        let deadline = Date().addingTimeInterval(120)
        while try repo.chunks.allChunks().count < before.count + 5 && Date() < deadline && p.isRunning { usleep(20_000) }
        #expect(p.isRunning, "import finished before it could be killed")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal)

        // No snapshot appeared; nothing stored is corrupt.
        #expect(try repo.snapshots().map(\.path) == ["vm/100/2026-11-30T01:00:00Z"])
        #expect(try repo.chunks.allChunks().count > before.count)
        try assertNoCorruptChunk(repo)
        // gc after the cutoff: the killed writer's registration is stale, its orphans and temp files go.
        // (Times are whole seconds: a chunk written in gc's first second is newer than a 0 cutoff.)
        sleep(2)
        let gc = try SnapdumpBinary.run(["repo", "gc", "r1", "--atime-cutoff", "0"], configDir: cfg)
        #expect(gc.status == 0 && gc.stdout.contains("stale writer"), "\(gc)")
        let after = Set(try repo.chunks.allChunks().map(\.0))
        #expect(after == before, "\(after.subtracting(before).count) orphans left, \(before.subtracting(after).count) lost; gc said: \(gc.stdout)")
        let leftovers = try FileSystem.list(store + "/.chunks").flatMap { d in try FileSystem.list(store + "/.chunks/" + d).filter { $0.contains(".tmp_") } }
        #expect(leftovers.isEmpty, "temp files left: \(leftovers)")
        let v = try SnapdumpBinary.run(["repo", "verify", "r1"], configDir: cfg)
        #expect(v.status == 0, "\(v)")
    }

    @Test func fullFilesystemFailsCleanly() throws {
        let small = try Integration.require("SNAPDUMP_TEST_SMALLFS")
        let scratch = try Scratch("enospc")
        let dir = try Integration.scratchDirectory("repo-enospc", under: small)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = dir + "/store"
        let cfg = try config(scratch, store: store)
        let free = try FileSystem.usage(small).available
        let big = scratch.path("vzdump-qemu-100-2026_11_30-02_00_00.vma")
        try archive(big, noise(Int(free) + (24 << 20), seed: 3), ctime: 1_796_004_000)
        let r = try SnapdumpBinary.run(["repo", "import", "r1", big], configDir: cfg)
        #expect(r.status != 0)
        #expect(r.errorLines.count == 1 && r.stderr.hasPrefix("Error:") && r.stderr.contains("No space left"), "\(r)")
        let repo = try Repository(root: store)
        #expect(try repo.snapshots().isEmpty)
        #expect(try FileSystem.list(store + "/vm/100").filter { !$0.hasPrefix(".") }.isEmpty, "nothing half-written visible")
        try assertNoCorruptChunk(repo)
        let leftovers = try FileSystem.list(store + "/.chunks").flatMap { d in try FileSystem.list(store + "/.chunks/" + d).filter { $0.contains(".tmp_") } }
        #expect(leftovers.isEmpty, "temp files left: \(leftovers)")
        // gc after the cutoff gives the space back.
        sleep(2)
        #expect(try SnapdumpBinary.run(["repo", "gc", "r1", "--atime-cutoff", "0"], configDir: cfg).status == 0)
        #expect(try repo.chunks.allChunks().isEmpty)
        #expect(try FileSystem.usage(small).available >= free - (2 << 20))
    }
}
