import Foundation
import SnapdumpSystem
@testable import Storage
import Testing
import TestSupport

/// The virtual size of a qcow2 image read from its header, as `qemu-img info` reports it.
@Suite("qcow2 header", .enabled(if: Integration.required || Command.exists("qemu-img")))
struct QCOW2HeaderTests {
    @Test func headerSizeIsQemuImgsVirtualSize() throws {
        let dir = try Integration.scratchDirectory("qcow2-header")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.qcow2"
        for (create, resize) in [("64M", nil), ("1G", "+3584M"), ("1234567", nil), ("8G", "-4G")] as [(String, String?)] {
            try? FileManager.default.removeItem(atPath: image)
            try Command.run(["qemu-img", "create", "-q", "-f", "qcow2", image, create])
            if let resize { try Command.run(["qemu-img", "resize", "-q", "--shrink", "-f", "qcow2", image, resize]) }
            let info = try JSONSerialization.jsonObject(with: Data(try Command.run(["qemu-img", "info", "--output=json", image]).utf8)) as? [String: Any]
            let expected = try #require((info?["virtual-size"] as? NSNumber)?.uint64Value)
            #expect(try ImageDirectory.qcow2Header(image)?.size == expected, "\(create) \(resize ?? "")")
            #expect(try ImageDirectory.virtualSize(path: image, format: .qcow2) == expected)
        }
        // Internal snapshots counted in the header: none, then two (qemu-img lists them only then).
        #expect(try ImageDirectory.qcow2Header(image)?.snapshots == 0)
        #expect(try ImageDirectory.qcow2Snapshots(path: image).isEmpty)
        for name in ["a", "b"] { try Command.run(["qemu-img", "snapshot", "-c", name, image]) }
        #expect(try ImageDirectory.qcow2Header(image)?.snapshots == 2)
        #expect(try ImageDirectory.qcow2Snapshots(path: image).map(\.name) == ["a", "b"])
        // Not a qcow2 header: nil, and virtualSize asks qemu-img, as before (which probes the format).
        let raw = dir + "/disk.raw"
        try Command.run(["truncate", "-s", "1M", raw])
        #expect(try ImageDirectory.qcow2Header(raw) == nil)
        #expect(try ImageDirectory.virtualSize(path: raw, format: .qcow2) == 1 << 20)
    }
}
