import Foundation
import SnapdumpSystem
import TestSupport
@testable import Repository
import Archive

/// A scratch directory removed when the value is dropped.
final class Scratch {
    let dir: String
    init(_ label: String) throws { dir = try Integration.scratchDirectory("repo-\(label)") }
    func path(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
}

/// Deterministic content that zstd compresses some but not to nothing.
func pseudoRandom(_ n: Int, seed: UInt64) -> [UInt8] {
    var s = seed
    var out = [UInt8](repeating: 0, count: n)
    for i in 0..<n {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        out[i] = UInt8(truncatingIfNeeded: s >> 59) // 32 distinct values: compressible
    }
    return out
}

/// Runs python3 with a script and arguments; returns stdout, throws on failure.
func python(_ script: String, _ args: [String] = []) throws -> String {
    let r = try Command.run(["/usr/bin/python3", "-c", script] + args)
    return r.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A disk image in memory read through the writer's closure.
func addDisk(_ w: BackupWriter, name: String, _ bytes: [UInt8]) throws -> FixedIndex {
    let data = bytes
    return try w.addDisk(name: name, size: UInt64(data.count), threads: 3, read: { off, buf in
        data.withUnsafeBytes { src in
            buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(off)..<Int(off) + buf.count]))
        }
    })
}

func restoreToMemory(_ repo: Repository, _ s: SnapshotName, file: String) throws -> [UInt8] {
    let idx = try repo.index(s, file: file)
    let out = Mutex([UInt8](repeating: 0, count: Int(idx.size)))
    try ChunkReader(repository: repo, snapshot: s).restore(idx, sparse: true) { off, b in
        out.withLock { o in o.withUnsafeMutableBytes { d in
            UnsafeMutableRawBufferPointer(rebasing: d[Int(off)..<Int(off) + b.count]).copyMemory(from: b)
        } }
    }
    return out.withLock { $0 }
}

import Synchronization

/// Sets a chunk's atime back (a gc "after the cutoff" without waiting a day).
func age(_ path: String, seconds: Int) {
    var st = stat()
    stat(path, &st)
    var t = [timespec(tv_sec: st.st_atim.tv_sec - seconds, tv_nsec: 0), timespec(tv_sec: st.st_mtim.tv_sec - seconds, tv_nsec: 0)]
    utimensat(AT_FDCWD, path, &t, 0)
}

/// The unencrypted chunk digests of a disk image, as the writer computes them.
enum FixedIndexDigests {
    static func of(_ disk: [UInt8]) throws -> [SHA256Digest] {
        let n = FixedIndex.chunkCount(size: UInt64(disk.count))
        return (0..<n).map { i in
            let lo = i * Int(FixedIndex.defaultChunkSize)
            let hi = min(lo + Int(FixedIndex.defaultChunkSize), disk.count)
            return disk.withUnsafeBytes { DeviceDigest.digest(of: UnsafeRawBufferPointer(rebasing: $0[lo..<hi])) }
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
