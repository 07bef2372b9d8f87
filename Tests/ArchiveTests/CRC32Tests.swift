import CZlib
import Testing
@testable import Archive

@Suite("CRC-32 (PCLMULQDQ folding)")
struct CRC32Tests {
    static func zlib(_ crc: UInt32, _ b: UnsafeRawBufferPointer) -> UInt32 {
        guard b.count > 0 else { return crc }
        return UInt32(crc32(UInt(crc), b.baseAddress!.assumingMemoryBound(to: Bytef.self), UInt32(b.count)))
    }

    static func random(_ n: Int, seed: UInt64) -> [UInt8] {
        var rng = SeededRandom(seed)
        return (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    @Test("the x86-64 test machine takes the folding path (else these tests test zlib against itself)")
    func folds() {
        #if arch(x86_64)
        #expect(CRC32.folds)
        #endif
    }

    @Test("equals zlib's crc32 for every length 0…4096, from 0 and from a running CRC")
    func everyLength() {
        let data = Self.random(4096, seed: 7)
        data.withUnsafeBytes { all in
            for n in 0...4096 {
                let b = UnsafeRawBufferPointer(rebasing: all[0..<n])
                #expect(CRC32.checksum(b) == Self.zlib(0, b), "length \(n)")
                #expect(CRC32.update(0xdeadbeef, b) == Self.zlib(0xdeadbeef, b), "length \(n), running")
            }
        }
    }

    @Test("known answers: \"123456789\" is 0xcbf43926; 1 MiB of zeros and of 0xff")
    func knownAnswers() {
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { CRC32.checksum($0) } == 0xcbf4_3926)
        for byte: UInt8 in [0, 0xff] {
            let b = [UInt8](repeating: byte, count: 1 << 20)
            b.withUnsafeBytes { #expect(CRC32.checksum($0) == Self.zlib(0, $0)) }
        }
    }

    @Test("random large buffers at every alignment 0…63, and split at uneven points")
    func alignmentsAndSplits() {
        let size = 4 << 20
        let data = Self.random(size + 64, seed: 11)
        data.withUnsafeBytes { all in
            for shift in 0..<64 {
                let n = size - shift * 977
                let b = UnsafeRawBufferPointer(rebasing: all[shift..<(shift + n)])
                let whole = CRC32.checksum(b)
                #expect(whole == Self.zlib(0, b), "shift \(shift)")
                // Split in three: the running CRC carries over.
                let cuts = [0, (shift * 4093) % n, n - (shift * 131) % 300, n].sorted()
                var crc: UInt32 = 0
                for i in 0..<3 { crc = CRC32.update(crc, UnsafeRawBufferPointer(rebasing: b[cuts[i]..<cuts[i + 1]])) }
                #expect(crc == whole, "shift \(shift), cuts \(cuts)")
            }
        }
    }

    @Test("a flipped bit anywhere changes the CRC")
    func detectsFlips() {
        var data = Self.random(100_000, seed: 3)
        let good = data.withUnsafeBytes { CRC32.checksum($0) }
        for pos in [0, 1, 15, 16, 63, 64, 65, 50_000, 99_983, 99_999] {
            data[pos] ^= 0x10
            #expect(data.withUnsafeBytes { CRC32.checksum($0) } != good, "byte \(pos)")
            #expect(data.withUnsafeBytes { CRC32.checksum($0) == Self.zlib(0, $0) }, "byte \(pos)")
            data[pos] ^= 0x10
        }
    }
}
