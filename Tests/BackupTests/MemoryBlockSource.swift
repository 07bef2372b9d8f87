import Foundation
import Storage

/// A BlockSource over bytes in memory, with a chosen allocation map, and an
/// optional read error at an offset (to test failure paths).
final class MemoryBlockSource: BlockSource, @unchecked Sendable {
    let bytes: [UInt8]
    let ranges: [AllocationRange]?
    let failAt: UInt64?
    let name: String
    private(set) var reads: [(UInt64, Int)] = []
    private(set) var closed = false

    init(bytes: [UInt8], allocation: [AllocationRange]? = nil, failAt: UInt64? = nil, name: String = "memory") {
        self.bytes = bytes
        ranges = allocation
        self.failAt = failAt
        self.name = name
    }

    var size: UInt64 { UInt64(bytes.count) }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if let f = failAt, f >= offset, f < offset + UInt64(buffer.count) {
            throw StorageError(.backend, "injected read error in '\(name)' at offset \(f)")
        }
        reads.append((offset, buffer.count))
        let n = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { src in
            buffer.baseAddress!.copyMemory(from: src.baseAddress! + Int(offset), byteCount: n)
        }
        return n
    }

    func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        ranges ?? [AllocationRange(offset: 0, length: size, kind: .data)]
    }

    func close() throws { closed = true }
}
