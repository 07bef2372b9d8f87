import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
@testable import Guest

@Suite("Accelerator probe")
struct AcceleratorProbeTests {
    @Test func environmentOverrides() async throws {
        let dir = try scratch("accel")
        defer { removeTree(dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        let r = try await AcceleratorProbe.resolve(paths: paths, environment: ["SNAPDUMP_ACCEL": "kvm"])
        #expect(r.accelerator == .kvm && r.reason == "SNAPDUMP_ACCEL")
        #expect(!FileSystem.exists(AcceleratorProbe.cacheFile(paths)))
        await #expect(throws: ConfigError.self) {
            try await AcceleratorProbe.resolve(paths: paths, environment: ["SNAPDUMP_ACCEL": "hvf"])
        }
    }

    @Test func cachedAnswerIsUsed() async throws {
        let dir = try scratch("accel")
        defer { removeTree(dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        try FileSystem.createDirectory(paths.runDir)
        try FileSystem.writeAtomically(AcceleratorProbe.cacheFile(paths), "tcg\n")
        let r = try await AcceleratorProbe.resolve(paths: paths, environment: [:], qemuBinary: "/nonexistent/qemu")
        #expect(r.accelerator == .tcg)
        #expect(r.reason.hasPrefix("cached"))
    }

    /// The decision on the two probe runs: a KVM that finishes, but far slower than TCG, is not used
    /// (this machine: KVM 1.8–2.0 s, TCG 0.1 s, and Linux under that KVM never printed).
    @Test func slowKVMLosesToTCG() {
        func ran(_ ms: Int, _ status: Int32 = 133) -> AcceleratorProbe.Run { .success((.exited(status), .milliseconds(ms))) }
        let t: Duration = .seconds(2)
        #expect(AcceleratorProbe.decide(kvm: ran(120), tcg: ran(100), timeout: t).works)
        #expect(AcceleratorProbe.decide(kvm: ran(450), tcg: ran(50), timeout: t).works, "under the floor: start-up, not KVM")
        #expect(AcceleratorProbe.decide(kvm: ran(900), tcg: ran(400), timeout: t).works, "a loaded host: both slow")
        #expect(AcceleratorProbe.decide(kvm: ran(300), tcg: .success(nil), timeout: t).works, "no yardstick: KVM finished in time")
        let slow = AcceleratorProbe.decide(kvm: ran(1812), tcg: ran(104), timeout: t)
        #expect(!slow.works)
        #expect(slow.detail.contains("1.8") && slow.detail.contains("too slow"), "\(slow.detail)")
        #expect(!AcceleratorProbe.decide(kvm: .success(nil), tcg: ran(100), timeout: t).works)
        #expect(!AcceleratorProbe.decide(kvm: ran(100, 1), tcg: ran(100), timeout: t).works)
        #expect(!AcceleratorProbe.decide(kvm: .failure(CocoaError(.fileNoSuchFile)), tcg: ran(100), timeout: t).works)
    }

    @Test func multibootImageIsWellFormed() {
        let img = AcceleratorProbe.multibootImage
        func word(_ i: Int) -> UInt32 { img[i * 4..<i * 4 + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        #expect(word(0) == 0x1BAD_B002)
        #expect(word(0) &+ word(1) &+ word(2) == 0)
        #expect(word(5) == 0x10_0000 + UInt32(img.count))
        #expect(img.count == 46)
    }

    /// The real probe finishes in bounded time, whatever /dev/kvm does, and
    /// caches its answer. (On the project's machines KVM hangs or crawls: TCG.)
    @Test(.enabled(if: QEMU.enabled)) func realProbeIsBoundedAndCached() async throws {
        try QEMU.require()
        let dir = try scratch("accel")
        defer { removeTree(dir) }
        let paths = SnapdumpPaths(configDir: dir, runDir: dir + "/run")
        let (r, elapsed) = try await timed { try await AcceleratorProbe.resolve(paths: paths, environment: [:], timeout: .seconds(2)) }
        #expect(elapsed < .seconds(4))
        #expect(r.reason.hasPrefix("probe: "))
        #expect(try FileSystem.readText(AcceleratorProbe.cacheFile(paths)) == r.accelerator.rawValue + "\n")
        if !FileSystem.exists("/dev/kvm") { #expect(r.accelerator == .tcg) }
        // No probe image or QEMU left behind.
        #expect(try FileSystem.list(paths.runDir) == ["accel"])
        #expect(ProcessTable.find(mentioning: paths.runDir + "/accel-probe").isEmpty)
    }
}
