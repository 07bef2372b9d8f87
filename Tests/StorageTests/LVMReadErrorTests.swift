import Foundation
import SnapdumpSystem
import Storage
import Testing
import TestSupport

/// A real read error, which only device-mapper can make here: inside the
/// storage VM (LVMInVMTests starts it), MiB 8 of an LV is mapped to the `error`
/// target. Exporting it must fail naming the device and the offset, and leave
/// no partial file; the readable parts still read.
@Suite("lvm: a real read error (dm error target, storage VM only)")
struct LVMReadErrorTests {
    @Test func exportFailsNamingDeviceAndOffset() throws {
        // Only in the storage VM; on the host LVMInVMTests runs this there.
        guard let vg = Integration.fixture("SNAPDUMP_TEST_LVM_VG") else { return }
        let storage = try ScratchStorage(lvm: .lvm, vg: vg)
        defer { storage.destroy() }
        let p = storage.plugin
        let v = try p.allocate(vmid: 150, size: 32 << 20, format: .raw)
        let lv = try p.path(of: v).path
        try TestVolume.writeRaw(path: lv, states: TestVolume.initialState(), tag: 1)
        let name = "sdtest-err-\(Fixture.short())"
        let sectors = (32 << 20) / 512, bad = (8 << 20) / 512, badLen = (1 << 20) / 512
        let table = "0 \(bad) linear \(lv) 0\n\(bad) \(badLen) error\n\(bad + badLen) \(sectors - bad - badLen) linear \(lv) \(bad + badLen)\n"
        try Command.run(["dmsetup", "create", name], environment: ["DM_DISABLE_UDEV": "1"], input: table)
        defer { if FileSystem.exists("/dev/mapper/\(name)") { _ = try? Command.capture(["dmsetup", "remove", name], environment: ["DM_DISABLE_UDEV": "1"]) } }
        let dev = "/dev/mapper/\(name)"

        let scratch = try Integration.scratchDirectory("read-error")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let out = scratch + "/export.raw"
        let source = try FileBlockSource(path: dev, name: "\(v) through \(dev)")
        var message = ""
        do {
            _ = try VolumeExporter.export(source, toFile: out)
            Issue.record("export of a device with an unreadable MiB succeeded")
        } catch {
            message = "\(error)"
        }
        #expect(message.contains(dev) && message.contains("Input/output error"), "error: \(message)")
        let offset = message.split(separator: " ").compactMap { UInt64($0) }.first
        #expect(offset.map { $0 >= 4 << 20 && $0 <= 9 << 20 } == true, "offset in \(message)")
        let temps = try FileSystem.list((out as NSString).deletingLastPathComponent).filter { $0.hasPrefix((out as NSString).lastPathComponent + ".tmp.") }
        #expect(!FileSystem.exists(out) && temps.isEmpty, "partial export left")
        // The readable part before the bad MiB reads back exactly.
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        #expect(try source.read(at: 7 << 20, into: buf) == 1 << 20)
        // The mapping holds the LV open: gone first, then the volume.
        try source.close()
        try Command.run(["dmsetup", "remove", name], environment: ["DM_DISABLE_UDEV": "1"])
        try p.free(v)
        print("[lvm read error] export failed as it should: \(message)")
    }
}
