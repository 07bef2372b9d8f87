import Foundation
import Testing
import SnapdumpSystem
import TestSupport
@testable import Archive

// Helpers shared by the Archive tests: device content, scratch files, and an
// independent VMA parser (its own MD5, no Archive code) that checks the
// writer's output rule by rule.

/// A scratch directory removed when the value is dropped.
final class Scratch {
    let dir: String
    init(_ label: String) throws { dir = try Integration.scratchDirectory("archive-\(label)") }
    func path(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
}

/// Deterministic pseudo-random numbers (SplitMix64) for shuffles and content.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The golden-file pattern: byte at device offset i inside a run.
func patternByte(_ i: Int, seed: Int) -> UInt8 { UInt8((seed + 7 * i + (i >> 12)) & 0xFF) }

func content(size: Int, runs: [(offset: Int, length: Int, seed: Int)]) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: size)
    for r in runs { for i in r.offset..<(r.offset + r.length) { b[i] = patternByte(i, seed: r.seed) } }
    return b
}

/// A test device: its content and which clusters are passed as holes.
struct TestDevice {
    var device: VMADevice
    var content: [UInt8]
    var holes: Set<UInt32>
}

/// Writes `devices` into a VMA archive in the given cluster order.
@discardableResult
func writeArchive(path: String, uuid: UUID, ctime: Int64 = 1_700_000_000, devices: [TestDevice],
                  configs: [VMAConfigBlob], order: [(UInt8, UInt32)], compression: Compression,
                  reserved: Int? = 1024, metadata: [UInt8]? = nil) throws -> VMAWriter.Statistics {
    let w = try VMAWriter(path: path + ".dat", uuid: uuid, ctime: ctime, devices: devices.map(\.device),
                          configs: configs, reservedMetadataSize: reserved, compression: compression)
    let byID = Dictionary(uniqueKeysWithValues: devices.map { ($0.device.id, $0) })
    var cluster = [UInt8](repeating: 0, count: VMAFormat.clusterSize)
    for (id, c) in order {
        let d = byID[id]!
        if d.holes.contains(c) {
            try w.addZeroCluster(device: id, cluster: c)
            continue
        }
        let start = Int(c) * VMAFormat.clusterSize
        let end = min(start + VMAFormat.clusterSize, d.content.count)
        // Garbage past the device end must not reach the archive.
        cluster.replaceSubrange(0..<(end - start), with: d.content[start..<end])
        if end - start < cluster.count {
            cluster.replaceSubrange((end - start)..., with: repeatElement(0xEE, count: cluster.count - (end - start)))
        }
        try cluster.withUnsafeBytes { try w.addCluster(device: id, cluster: c, data: $0) }
    }
    var json = metadata
    if json == nil && reserved != nil {
        json = try SnapdumpMetadata(
            devices: devices.map { d in
                SnapdumpMetadata.Device(name: d.device.name, size: d.device.size,
                                        sha256: d.content.withUnsafeBytes { DeviceDigest.digest(ofDevice: $0) })
            },
            mode: "snapshot", downtimeMs: 5, startTime: ctime, snapdumpVersion: "test").encoded()
    }
    try w.finish(snapdumpJSON: json)
    let stats = w.statistics
    try w.commit(to: path)
    return stats
}

func readFile(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }
func writeFile(_ path: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

/// Decompresses with the system tool (`zstd -d` / `gzip -d`) as one stream.
func systemDecompress(_ path: String, _ kind: Compression.Kind) throws -> [UInt8] {
    let out = path + ".raw"
    let tool = kind == .zstd ? "zstd -d -q -c" : "gzip -d -c"
    try Command.run(["/bin/sh", "-c", "\(tool) '\(path)' > '\(out)'"])
    defer { try? FileManager.default.removeItem(atPath: out) }
    return try readFile(out)
}

/// Everything the independent parser learned from an archive.
struct ParsedArchive {
    var uuid: [UInt8]
    var ctime: Int64
    var headerSize: Int
    var configs: [String: [UInt8]]
    var configOrder: [String]
    var devices: [UInt8: (name: String, size: UInt64)]
    /// Entries per extent, in order.
    var extentEntryCounts: [Int]
    /// Reconstructed device contents.
    var contents: [UInt8: [UInt8]]
    var entries: [(dev: UInt8, cluster: UInt32, mask: UInt16)]
}

struct ParseFailure: Error, CustomStringConvertible {
    var description: String
}

/// Parses a raw (uncompressed) VMA stream, checking every rule of the
/// format; throws `ParseFailure` naming the first rule broken.
func independentParse(_ b: [UInt8]) throws -> ParsedArchive {
    func fail(_ s: String) -> ParseFailure { ParseFailure(description: s) }
    func be32(_ o: Int) -> UInt32 { b[o..<o + 4].reduce(0) { $0 << 8 | UInt32($1) } }
    func be64(_ o: Int) -> UInt64 { b[o..<o + 8].reduce(0) { $0 << 8 | UInt64($1) } }
    guard b.count >= 12288, Array(b[0..<4]) == [0x56, 0x4D, 0x41, 0], be32(4) == 1 else { throw fail("bad magic/version") }
    let headerSize = Int(be32(56))
    guard headerSize % 512 == 0, headerSize <= b.count else { throw fail("header size \(headerSize) not a multiple of 512") }
    var h = Array(b[0..<headerSize])
    for i in 32..<48 { h[i] = 0 }
    guard TestMD5.digest(h) == Array(b[32..<48]) else { throw fail("header MD5") }
    guard be32(48) == 12288 else { throw fail("blob buffer offset") }
    let blobSize = Int(be32(52))
    guard 12288 + blobSize <= headerSize, headerSize - (12288 + blobSize) < 512 else { throw fail("blob size / padding") }
    guard b[12288] == 0 else { throw fail("blob byte 0 must be unused") }
    func blob(_ p: UInt32) throws -> [UInt8] {
        let o = 12288 + Int(p)
        guard p >= 1, Int(p) + 2 <= blobSize else { throw fail("blob ptr \(p)") }
        let len = Int(b[o]) | Int(b[o + 1]) << 8   // little-endian
        guard Int(p) + 2 + len <= blobSize else { throw fail("blob len") }
        return Array(b[(o + 2)..<(o + 2 + len)])
    }
    func string(_ p: UInt32) throws -> String {
        let s = try blob(p)
        guard s.last == 0 else { throw fail("string without NUL") }
        return String(decoding: s.dropLast(), as: UTF8.self)
    }
    var configs: [String: [UInt8]] = [:], order: [String] = []
    for i in 0..<256 {
        let np = be32(2044 + 4 * i), dp = be32(3068 + 4 * i)
        if np == 0 && dp == 0 { continue }
        let name = try string(np)
        configs[name] = try blob(dp)
        order.append(name)
    }
    var devices: [UInt8: (name: String, size: UInt64)] = [:]
    for id in 0..<256 {
        let o = 4096 + 32 * id
        let np = be32(o), size = be64(o + 8)
        if np == 0 && size == 0 { continue }
        guard (1...254).contains(id) else { throw fail("device slot \(id)") }
        devices[UInt8(id)] = (try string(np), size)
    }
    var contents: [UInt8: [UInt8]] = devices.mapValues { [UInt8](repeating: 0, count: Int($0.size)) }
    var seen: Set<UInt64> = []
    var counts: [Int] = []
    var entries: [(UInt8, UInt32, UInt16)] = []
    var pos = headerSize
    while pos < b.count {
        guard pos + 512 <= b.count else { throw fail("truncated extent header at \(pos)") }
        guard Array(b[pos..<pos + 4]) == Array("VMAE".utf8), b[pos + 4] == 0, b[pos + 5] == 0 else { throw fail("extent magic at \(pos)") }
        let blockCount = Int(b[pos + 6]) << 8 | Int(b[pos + 7])
        guard Array(b[pos + 8..<pos + 24]) == Array(b[8..<24]) else { throw fail("extent uuid") }
        var eh = Array(b[pos..<pos + 512])
        for i in 24..<40 { eh[i] = 0 }
        guard TestMD5.digest(eh) == Array(b[pos + 24..<pos + 40]) else { throw fail("extent MD5 at \(pos)") }
        let extentSize = 512 + 4096 * blockCount
        guard pos + extentSize <= b.count else { throw fail("extent data truncated") }
        var dataPos = pos + 512, used = 0, maskBlocks = 0
        for i in 0..<59 {
            let info = be64(pos + 40 + 8 * i)
            let mask = UInt16(info >> 48), dev = UInt8(info >> 32 & 0xFF), cluster = UInt32(info & 0xFFFF_FFFF)
            if dev == 0 {
                guard info == 0 else { throw fail("unused entry not zero") }
                continue
            }
            guard used == i else { throw fail("used entries not contiguous") }
            used += 1
            guard let d = devices[dev] else { throw fail("unknown device \(dev)") }
            let clusters = (d.size + 65535) / 65536
            guard UInt64(cluster) < clusters else { throw fail("cluster beyond end") }
            guard seen.insert(UInt64(dev) << 32 | UInt64(cluster)).inserted else { throw fail("duplicate cluster \(cluster) of \(dev)") }
            entries.append((dev, cluster, mask))
            for j in 0..<16 where mask & (1 << j) != 0 {
                let off = Int(cluster) * 65536 + j * 4096
                guard off < Int(d.size) else { throw fail("stored block past device end: cluster \(cluster) block \(j)") }
                let n = min(4096, Int(d.size) - off)
                let block = b[dataPos..<dataPos + 4096]
                guard block.contains(where: { $0 != 0 }) else { throw fail("stored block is all zero (should be masked)") }
                guard block.dropFirst(n).allSatisfy({ $0 == 0 }) else { throw fail("partial block not zero-padded") }
                contents[dev]!.replaceSubrange(off..<off + n, with: block.prefix(n))
                dataPos += 4096
                maskBlocks += 1
            }
        }
        guard maskBlocks == blockCount else { throw fail("block_count \(blockCount) vs masks \(maskBlocks)") }
        counts.append(used)
        pos += extentSize
    }
    for (id, d) in devices {
        let clusters = (d.size + 65535) / 65536
        for c in 0..<clusters where !seen.contains(UInt64(id) << 32 | c) { throw fail("missing cluster \(c) of \(id)") }
    }
    return ParsedArchive(uuid: Array(b[8..<24]), ctime: Int64(bitPattern: be64(24)), headerSize: headerSize,
                         configs: configs, configOrder: order, devices: devices, extentEntryCounts: counts,
                         contents: contents, entries: entries.map { (dev: $0.0, cluster: $0.1, mask: $0.2) })
}

/// RFC 1321 MD5, written here so the tests do not check the code with itself.
enum TestMD5 {
    static func digest(_ message: [UInt8]) -> [UInt8] {
        let s: [UInt32] = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                           5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
                           4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                           6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21]
        let k: [UInt32] = (0..<64).map { UInt32(truncatingIfNeeded: Int64(abs(sin(Double($0 + 1))) * 4294967296.0)) }
        var a0: UInt32 = 0x67452301, b0: UInt32 = 0xefcdab89, c0: UInt32 = 0x98badcfe, d0: UInt32 = 0x10325476
        var m = message
        let bitLen = UInt64(message.count) * 8
        m.append(0x80)
        while m.count % 64 != 56 { m.append(0) }
        for i in 0..<8 { m.append(UInt8(truncatingIfNeeded: bitLen >> (8 * UInt64(i)))) }
        for chunk in stride(from: 0, to: m.count, by: 64) {
            var w = [UInt32](repeating: 0, count: 16)
            for i in 0..<16 {
                let o = chunk + 4 * i
                w[i] = UInt32(m[o]) | UInt32(m[o + 1]) << 8 | UInt32(m[o + 2]) << 16 | UInt32(m[o + 3]) << 24
            }
            var a = a0, b = b0, c = c0, d = d0
            for i in 0..<64 {
                var f: UInt32, g: Int
                switch i {
                case 0..<16: f = (b & c) | (~b & d); g = i
                case 16..<32: f = (d & b) | (~d & c); g = (5 * i + 1) % 16
                case 32..<48: f = b ^ c ^ d; g = (3 * i + 5) % 16
                default: f = c ^ (b | ~d); g = (7 * i) % 16
                }
                f = f &+ a &+ k[i] &+ w[g]
                a = d; d = c; c = b
                b = b &+ (f << s[i] | f >> (32 - s[i]))
            }
            a0 = a0 &+ a; b0 = b0 &+ b; c0 = c0 &+ c; d0 = d0 &+ d
        }
        return [a0, b0, c0, d0].flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    }
}

extension Array where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
