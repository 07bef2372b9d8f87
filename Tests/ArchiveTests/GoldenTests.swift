import Foundation
import Testing
@testable import Archive

/// A golden archive written by `scripts/golden/make-golden.py`, an
/// independent Python implementation of vma-format.md, and its manifest.
struct GoldenArchive: CustomStringConvertible {
    var name: String
    var vmaPath: String
    var uuid: UUID
    var ctime: Int64
    var devices: [TestDevice]
    var sha256: [UInt8: String]
    var digest: [UInt8: String]
    var configs: [VMAConfigBlob]
    var snapdumpJSON: String?
    var reserved: Int?
    var order: [(UInt8, UInt32)]

    var description: String { name }

    static let names = ["one-device", "two-devices", "two-configs"]

    static func load(_ name: String) throws -> GoldenArchive {
        let dir = try #require(Bundle.module.url(forResource: "Golden", withExtension: nil)).path
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).json"))) as! [String: Any]
        let uuidBytes = Hex.decode(json["uuid"] as! String)!
        var u = UUID().uuid
        withUnsafeMutableBytes(of: &u) { $0.copyBytes(from: uuidBytes) }
        var devices: [TestDevice] = [], sha: [UInt8: String] = [:], dig: [UInt8: String] = [:]
        let order = (json["order"] as! [[Any]]).map { (UInt8($0[0] as! Int), UInt32($0[1] as! Int), $0[2] as! String) }
        for d in json["devices"] as! [[String: Any]] {
            let id = UInt8(d["id"] as! Int), size = d["size"] as! Int
            let runs = (d["runs"] as! [[Int]]).map { (offset: $0[0], length: $0[1], seed: $0[2]) }
            let holes = Set(order.filter { $0.0 == id && $0.2 == "hole" }.map(\.1))
            devices.append(TestDevice(device: VMADevice(id: id, name: d["name"] as! String, size: UInt64(size)),
                                      content: content(size: size, runs: runs), holes: holes))
            sha[id] = d["sha256"] as? String
            dig[id] = d["digest"] as? String
        }
        return GoldenArchive(
            name: name, vmaPath: "\(dir)/\(name).vma", uuid: UUID(uuid: u), ctime: Int64(json["ctime"] as! Int),
            devices: devices, sha256: sha, digest: dig,
            configs: (json["configs"] as! [[String: String]]).map { VMAConfigBlob(name: $0["name"]!, text: $0["text"]!) },
            snapdumpJSON: json["snapdumpJSON"] as? String, reserved: json["reserved"] as? Int,
            order: order.map { ($0.0, $0.1) })
    }
}

@Suite("Golden files from the independent Python implementation")
struct GoldenTests {
    @Test("VMAReader reads the golden archive and its content", arguments: GoldenArchive.names)
    func read(name: String) throws {
        let g = try GoldenArchive.load(name)
        let reader = try VMAReader(path: g.vmaPath)
        #expect(reader.compression == .none)
        #expect(reader.header.uuid == g.uuid)
        #expect(reader.header.ctime == g.ctime)
        #expect(reader.header.devices == g.devices.map(\.device))
        var expectedNames = g.configs.map(\.name)
        if g.snapdumpJSON != nil { expectedNames.append("snapdump.json") }
        #expect(reader.header.configs.map(\.name) == expectedNames)
        for c in g.configs { #expect(reader.config(named: c.name) == c.data) }
        if let json = g.snapdumpJSON, let reserved = g.reserved {
            let blob = try #require(reader.config(named: "snapdump.json"))
            #expect(blob.count == reserved)
            #expect(blob == SnapdumpMetadata.pad(Array(json.utf8), to: reserved))
        }

        var restored: [UInt8: [UInt8]] = [:]
        for d in g.devices { restored[d.device.id] = [UInt8](repeating: 0xAA, count: d.content.count) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let v = try reader.verify { c in
            buffer.withUnsafeMutableBytes { c.expand(into: $0) }
            let start = Int(c.deviceOffset)
            restored[c.deviceID]!.replaceSubrange(start..<start + c.validBytes, with: buffer[0..<c.validBytes])
        }
        #expect(v.metadataChecked == (g.snapdumpJSON != nil))
        for d in g.devices {
            let r = restored[d.device.id]!
            #expect(r == d.content)
            #expect(SHA256.digest(r).hex == g.sha256[d.device.id])
            if v.metadataChecked {
                #expect(v.digests[d.device.id]?.hex == g.digest[d.device.id])
            }
        }
        // Without snapdump.json there is nothing to compare: nothing is hashed.
        if !v.metadataChecked { #expect(v.digests.isEmpty) }
    }

    @Test("VMAWriter with the same inputs writes byte-identical output", arguments: GoldenArchive.names)
    func writeIdentical(name: String) throws {
        let g = try GoldenArchive.load(name)
        let golden = try readFile(g.vmaPath)
        let s = try Scratch("golden")
        for compression in [Compression.none, .zstd(level: 3, workers: 0), .gzip] {
            let path = s.path("\(name).vma" + compression.kind.fileExtension)
            try writeArchive(path: path, uuid: g.uuid, ctime: g.ctime, devices: g.devices, configs: g.configs,
                             order: g.order, compression: compression, reserved: g.reserved,
                             metadata: g.snapdumpJSON.map { Array($0.utf8) })
            let stream = compression == .none ? try readFile(path) : try systemDecompress(path, compression.kind)
            #expect(stream.count == golden.count, "\(compression)")
            if let i = zip(stream, golden).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                Issue.record("\(name) \(compression): first difference at byte \(i)")
            }
        }
    }

    @Test("DeviceDigest agrees with the Python digests", arguments: GoldenArchive.names)
    func digests(name: String) throws {
        let g = try GoldenArchive.load(name)
        for d in g.devices {
            #expect(d.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) }.hex == g.digest[d.device.id])
        }
    }

    @Test("SnapdumpMetadata encodes the golden JSON byte for byte")
    func metadataEncoding() throws {
        for name in GoldenArchive.names {
            let g = try GoldenArchive.load(name)
            guard let json = g.snapdumpJSON else { continue }
            let m = try SnapdumpMetadata.decode(Array(json.utf8))
            #expect(try m.encoded() == Array(json.utf8))
        }
    }
}
