import Archive
import CFuzzDriver
import SnapdumpSystem
#if canImport(Glibc)
import Glibc
#endif

// libFuzzer entry point: every input is read as an archive file the way
// `vma verify` reads one (header, extents, snapdump.json, digests with the
// out-of-order spill), one in four instead the way `vma extract` and
// `restore` do (written through the digest workers into a target file the
// digests are read back from), and one in four with the caller writing. Any
// outcome but a thrown error — a trap, a sanitizer report, a leak, more
// memory or time than libFuzzer's limits — is a finding.

/// The input file: one per process in /dev/shm, unlinked at once, rewritten per input.
nonisolated(unsafe) private var inputFD: Int32 = -1
nonisolated(unsafe) private var targetFD: Int32 = -1

private func scratchFile(_ name: String) -> Int32 {
    let path = "/dev/shm/snapdump-fuzz-\(name).\(getpid())"
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    precondition(fd >= 0, "cannot create \(path)")
    unlink(path)
    return fd
}

/// The executable's entry: SwiftPM links `main` to `<module>_main`, so libFuzzer's own main is not used.
@_cdecl("VMAReaderFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data!, size) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    if inputFD < 0 {
        inputFD = scratchFile("input")
        targetFD = scratchFile("target")
    }
    // Odd-sized inputs have their MD5s and extent uuids repaired first, so that
    // mutations reach the checks behind the checksums; even-sized ones test the checksums.
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if size % 2 == 1 { repairChecksums(&bytes) }
    precondition(ftruncate(inputFD, 0) == 0 && pwrite(inputFD, bytes, size, 0) == size, "cannot write the input")
    do {
        let reader = try VMAReader(input: DecompressingReader(file: File(adopting: dup(inputFD), path: "fuzz-input.vma")))
        _ = try reader.snapdumpMetadata()
        if size % 4 == 1, let device = reader.header.devices.first {
            // As extract/restore: the first device is written through the digest workers into a
            // target file (O_DIRECT where /dev/shm takes it), read back for deferred chunks.
            precondition(ftruncate(targetFD, 0) == 0)
            let target = File(adopting: dup(targetFD), path: "fuzz-target")
            try target.truncate(to: device.size)
            let writer = DirectFile(file: target)
            defer { try? writer.closeDirect() }
            try reader.verify(targets: [device.id: target], writers: [device.id: writer], spillDirectory: "/dev/shm", nil,
                              zeroRuns: { _ in })
        } else if size % 4 == 3, let device = reader.header.devices.first {
            // A caller that writes every cluster itself (the path before write-through).
            precondition(ftruncate(targetFD, 0) == 0)
            let target = File(adopting: dup(targetFD), path: "fuzz-target")
            try target.truncate(to: device.size)
            try reader.verify(targets: [device.id: target], spillDirectory: "/dev/shm") { c in
                if c.deviceID == device.id { _ = try c.writeStoredBlocks(to: target) }
            }
        } else {
            try reader.verify(spillDirectory: "/dev/shm")
        }
    } catch {
        // A refused archive is the expected outcome for almost every input.
    }
    return 0
}

private func be(_ b: [UInt8], _ o: Int, _ n: Int) -> Int { b[o..<o + n].reduce(0) { $0 << 8 | Int($1) } }

/// Sets the header MD5 and, extent after extent, each extent's uuid and MD5
/// as a writer would (uncompressed archives only).
private func repairChecksums(_ b: inout [UInt8]) {
    guard b.count >= 12288, b[0..<4].elementsEqual([0x56, 0x4D, 0x41, 0]) else { return }
    let headerSize = be(b, 56, 4)
    guard headerSize >= 12288, headerSize <= min(b.count, 512 * 1024) else { return }
    func md5(_ range: Range<Int>, field: Int) {
        for i in field..<field + 16 { b[i] = 0 }
        let d = b[range].withUnsafeBytes { MD5.digest($0) }
        b.replaceSubrange(field..<field + 16, with: d)
    }
    md5(0..<headerSize, field: 32)
    var pos = headerSize
    while pos + 512 <= b.count, b[pos..<pos + 4].elementsEqual([0x56, 0x4D, 0x41, 0x45]) {
        b.replaceSubrange(pos + 8..<pos + 24, with: b[8..<24])
        md5(pos..<pos + 512, field: pos + 24)
        pos += 512 + 4096 * be(b, pos + 6, 2)
    }
}
