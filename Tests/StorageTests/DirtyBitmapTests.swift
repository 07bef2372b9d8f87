import Foundation
import SnapdumpSystem
@testable import Storage
import Testing
import TestSupport

/// A persistent dirty bitmap of a qcow2 image no QEMU runs: added with
/// `qemu-img bitmap`, dirtied by `qemu-io` (QEMU's block layer loads and
/// stores it), read from the image file (`QCOW2Bitmaps`; QCOW2BitmapsTests
/// compares it with the NBD block status of `qemu-nbd -B`).
@Suite("qcow2 dirty bitmaps offline", .enabled(if: Integration.required || Command.exists("qemu-nbd")))
struct DirtyBitmapTests {
    @Test func writesAfterTheBitmapAreTheChangedChunks() throws {
        let dir = NSTemporaryDirectory() + "snapdump-bitmap-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        let mib: UInt64 = 1 << 20
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
        // Written before the bitmap: not in it.
        try Command.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 8M", image])
        try QCOW2ImageBitmaps.add(image: image, name: "snapdump_base_1")
        #expect(try QCOW2ImageBitmaps.list(image: image) == [.init(name: "snapdump_base_1", inconsistent: false)])
        // Data into chunk 1, zeroes into chunk 3, one write across chunks 6 and 7.
        try Command.run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 5M 4k", "-c", "write -z 13M 64k", "-c", "write -P 3 29294592 128k", image])

        let c = try DirtyBitmap.changedChunks(image: image, bitmap: "snapdump_base_1", baseSize: 64 * mib, chunkSize: 4 * mib)
        #expect(Array(c.indices) == [1, 3, 6, 7], "\(Array(c.indices))")
        #expect(c.size == 64 * mib && c.method == "QEMU dirty bitmap")

        // A grown disk: the old last chunk and the new ones, whatever the bitmap says.
        let grown = try DirtyBitmap.changedChunks(image: image, bitmap: "snapdump_base_1", baseSize: 56 * mib, chunkSize: 4 * mib)
        #expect(Array(grown.indices) == [1, 3, 6, 7, 13, 14, 15], "\(Array(grown.indices))")

        // A bitmap the image does not have: an error naming it, never an empty change set.
        #expect(throws: (any Error).self) {
            try DirtyBitmap.changedChunks(image: image, bitmap: "snapdump_base_2", baseSize: 64 * mib, chunkSize: 4 * mib)
        }
        try QCOW2ImageBitmaps.remove(image: image, name: "snapdump_base_1")
        #expect(try QCOW2ImageBitmaps.list(image: image).isEmpty)
    }

    /// A run SIGKILLed after starting its qemu-nbd and before its client connected leaves that
    /// qemu-nbd waiting forever with the image open read-only, which denies writers: the next
    /// run's block-commit into the image failed with `Failed to get "write" lock`.
    /// `stopLeftovers` stops it, and only a qemu-nbd whose owner is gone.
    @Test func leftoverQemuNBDOfAKilledRunIsStopped() throws {
        let dir = NSTemporaryDirectory() + "snapdump-bitmap-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "8M"])
        // A pid no process has any more: a child that exited and was reaped.
        let dead = try Command.run(["sh", "-c", "echo $$"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let nbd = NSTemporaryDirectory() + "snapdump-nbd-\(dead)-leftover"
        try FileSystem.createDirectory(nbd, mode: 0o700)
        defer { try? FileManager.default.removeItem(atPath: nbd) }
        try Command.runDaemonizing(["qemu-nbd", "--read-only", "--format=qcow2", "--socket=\(nbd)/nbd.sock", "--fork",
                                    "--pid-file=\(nbd)/qemu-nbd.pid", "--shared=1", image])
        let pid = try #require(Int32(try FileSystem.readText(nbd + "/qemu-nbd.pid").trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { if kill(pid, 0) == 0 { kill(pid, SIGKILL) } }
        // Our own server is not touched.
        let ours = try QemuNBDServer.start(image: image, format: .qcow2, snapshot: nil)
        defer { ours.stop() }
        #expect(throws: (any Error).self) { try Command.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", image]) }

        QemuNBDServer.stopLeftovers()
        #expect(QemuNBDServer.hasExited(pid), "the killed run's qemu-nbd \(pid) still runs")
        #expect(!FileSystem.exists(nbd))
        #expect(kill(ours.pid, 0) == 0, "a live owner's qemu-nbd was stopped")
        ours.stop()
        try Command.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", image])
    }

    /// qemu-nbd exits within a millisecond of SIGTERM, but after `--fork` its parent is PID 1, which
    /// reaps slowly here: waiting for the pid to vanish cost 2 s per server (SIGTERM, a second, SIGKILL,
    /// a second) — 3.5 s of a 3.9 s incremental qcow2 backup. A zombie holds no file: stop is done.
    @Test func stopReturnsWhenQemuNBDExitsNotWhenItIsReaped() throws {
        let dir = NSTemporaryDirectory() + "snapdump-bitmap-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileSystem.createDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "8M"])
        for _ in 0..<3 {
            let server = try QemuNBDServer.start(image: image, format: .qcow2, snapshot: nil)
            let start = ContinuousClock.now
            server.stop()
            let took = ContinuousClock.now - start
            // SIGTERM (or SIGKILL after 0.2 s) and no wait for PID 1 (2 s and more here before).
            #expect(took < .seconds(1), "stopping qemu-nbd \(server.pid) took \(took)")
            #expect(QemuNBDServer.hasExited(server.pid))
            // Its image lock is gone with it.
            try Command.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", image])
        }
        #expect(QemuNBDServer.hasExited(getpid()) == false)
    }
}
