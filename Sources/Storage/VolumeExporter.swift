#if canImport(Glibc)
import Glibc
#endif
import SnapdumpSystem

/// Writes the raw content of a `BlockSource` to a file (sparse: zero runs
/// become holes) or to a stream (every byte). A file appears under its name
/// only when complete: it is written as `<name>.tmp.<random>`, fsynced and renamed.
public enum VolumeExporter {
    public static let chunkSize = 4 << 20
    static let zeroGranule = 64 << 10

    public struct Result: Sendable {
        public var bytes: UInt64
        public var dataBytes: UInt64
    }

    public static func export(_ source: any BlockSource, toFile path: String) throws -> Result {
        let (out, tmp) = try FileSystem.createTemporary(beside: path)
        do {
            var data: UInt64 = 0
            try forEachDataChunk(source) { offset, chunk in
                // Skip zero granules so the output stays sparse.
                var g = 0
                while g < chunk.count {
                    let n = min(zeroGranule, chunk.count - g)
                    let piece = UnsafeRawBufferPointer(rebasing: chunk[g..<g + n])
                    if !isZero(piece) {
                        try out.write(piece, at: offset + UInt64(g))
                        data += UInt64(n)
                    }
                    g += n
                }
            }
            try out.truncate(to: source.size)
            try out.sync()
            try out.close()
            try FileSystem.rename(tmp, to: path)
            let dir = (path as NSString).deletingLastPathComponent
            try FileSystem.syncDirectory(dir.isEmpty ? "." : dir)
            return Result(bytes: source.size, dataBytes: data)
        } catch {
            try? FileSystem.remove(tmp)
            if let e = error as? SystemError, e.isNoSpace {
                throw StorageError(.noSpace, "export of '\(source.name)' to \(path) failed: no space left on device")
            }
            throw error
        }
    }

    /// Streams every byte (zeros included) to `out` in order.
    public static func export(_ source: any BlockSource, toStream out: File) throws -> Result {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        var pos: UInt64 = 0
        var data: UInt64 = 0
        func zeroFill(to end: UInt64) throws {
            while pos < end {
                let n = Int(min(UInt64(chunkSize), end - pos))
                try out.writeAll(UnsafeRawBufferPointer(rebasing: zeros[0..<n]))
                pos += UInt64(n)
            }
        }
        try forEachDataChunk(source) { offset, chunk in
            try zeroFill(to: offset)
            try out.writeAll(chunk)
            pos += UInt64(chunk.count)
            data += UInt64(chunk.count)
        }
        try zeroFill(to: source.size)
        return Result(bytes: source.size, dataBytes: data)
    }

    /// How far ahead of the chunk being read the source is asked to prefetch.
    static let prefetchDistance: UInt64 = 16 << 20

    /// Reads the data ranges of `source` in chunks of up to 4 MiB into one reused buffer.
    ///
    /// The source is asked to prefetch `prefetchDistance` ahead, so the disk stays
    /// busy while a chunk is handed to `body`. Measured (BENCHMARKS.md): with only
    /// the kernel's readahead behind synchronous 4 MiB reads, a cold export took
    /// about 1.8× as long (median) as with the prefetch, and varied as much as
    /// `cat` does. A file source skips the prefetch of ranges already in the page cache.
    public static func forEachDataChunk(_ source: any BlockSource, _ body: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        for range in try source.allocationMap() where range.kind == .data {
            var off = range.offset
            let end = range.offset + range.length
            var prefetched = off
            while off < end {
                // Keep the window [off, off + prefetchDistance) requested, in chunk-sized steps.
                while prefetched < min(end, off + prefetchDistance) {
                    let n = min(UInt64(chunkSize), end - prefetched)
                    source.prefetch(offset: prefetched, length: n)
                    prefetched += n
                }
                let want = Int(min(UInt64(chunkSize), end - off))
                let n = try source.read(at: off, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
                guard n == want else {
                    throw StorageError(.backend, "short read of '\(source.name)' at offset \(off): \(n) of \(want) bytes")
                }
                try body(off, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                off += UInt64(n)
            }
        }
    }

    /// Whether every byte is zero, compared a machine word at a time.
    public static func isZero(_ buf: UnsafeRawBufferPointer) -> Bool {
        guard let base = buf.baseAddress, Int(bitPattern: base) & 7 == 0 else { return buf.allSatisfy { $0 == 0 } }
        let words = buf.count / 8
        let w = base.assumingMemoryBound(to: UInt64.self)
        var acc: UInt64 = 0
        var i = 0
        while i < words {
            acc |= w[i]
            if i & 127 == 127 && acc != 0 { return false }
            i += 1
        }
        if acc != 0 { return false }
        for j in (words * 8)..<buf.count where buf[j] != 0 { return false }
        return true
    }
}

import Foundation
