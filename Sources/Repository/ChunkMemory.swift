#if canImport(Glibc)
import Glibc
#endif

/// A buffer a thread reuses for every chunk of a backup (plaintext, blob,
/// decoded previous chunk): anonymous memory in 2 MiB-aligned transparent
/// huge pages where the kernel gives them (`madvise` mode). An incremental
/// run builds only ~10 chunks per thread, so the first touch of 4 KiB pages
/// was a tenth of its CPU in page faults; a huge page faults once for 512 of
/// them. Ordinary pages if the kernel has none (malloc if mmap fails).
final class ChunkMemory: @unchecked Sendable {
    // @unchecked: the memory is the owner's to use from its one thread.
    static let hugePage = 2 << 20
    let bytes: UnsafeMutableRawBufferPointer
    private let mapped: Int

    init(byteCount: Int) {
        let size = (max(byteCount, 1) + Self.hugePage - 1) / Self.hugePage * Self.hugePage
        // One huge page more, cut off again, so the start is 2 MiB-aligned.
        guard let raw = mmap(nil, size + Self.hugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            bytes = .allocate(byteCount: byteCount, alignment: 4096)
            mapped = 0
            return
        }
        let address = UInt(bitPattern: raw)
        let start = (address + UInt(Self.hugePage) - 1) / UInt(Self.hugePage) * UInt(Self.hugePage)
        let head = Int(start - address)
        if head > 0 { munmap(raw, head) }
        if Self.hugePage - head > 0 { munmap(UnsafeMutableRawPointer(bitPattern: start + UInt(size))!, Self.hugePage - head) }
        let p = UnsafeMutableRawPointer(bitPattern: start)!
        _ = madvise(p, size, MADV_HUGEPAGE)
        bytes = UnsafeMutableRawBufferPointer(start: p, count: byteCount)
        mapped = size
    }

    deinit {
        if mapped > 0 { munmap(bytes.baseAddress, mapped) } else { bytes.deallocate() }
    }
}
