import Synchronization
import SnapdumpSystem
import Archive

/// The previous chunks a patching upload will decode, asked of the disk a
/// window ahead of the threads (`posix_fadvise(WILLNEED)`).
///
/// A chunk written by an earlier backup went past the page cache (O_DIRECT),
/// so each patched chunk's decode began with a cold ~2 MiB read of its blob:
/// in a 20-chunk incremental, 105 preads of the two threads waited 79 ms
/// together, two requests at a time. Asked ahead, the reads queue at the
/// device while the threads work on the chunks before them. A window, not
/// everything: a large change must not fill the page cache with chunks read
/// minutes before they are used.
final class ChunkPrefetch: Sendable {
    private let paths: [String]
    private let position: [Int: Int]
    private let issued = Mutex(0)
    let window: Int

    /// `chunks`: chunk index → previous digest, for the chunks to be patched, in index order
    /// (the order the threads take them).
    init(store: ChunkStore, chunks: [(index: Int, digest: SHA256Digest)], window: Int = 16) {
        paths = chunks.map { store.path(of: $0.digest) }
        var p: [Int: Int] = [:]
        for (k, c) in chunks.enumerated() { p[c.index] = k }
        position = p
        self.window = window
    }

    /// The first `window` chunks asked for.
    func start() { ask(upTo: window) }

    /// A thread took chunk `index`: the chunks up to `window` after it are asked for.
    func reached(_ index: Int) {
        guard let k = position[index] else { return }
        ask(upTo: k + 1 + window)
    }

    /// Paths asked for so far (tests).
    var askedCount: Int { issued.withLock { $0 } }

    private func ask(upTo end: Int) {
        let range: Range<Int> = issued.withLock { n in
            let upper = min(end, paths.count)
            guard upper > n else { return n..<n }
            defer { n = upper }
            return n..<upper
        }
        for k in range {
            // A hint: a chunk that cannot be opened now is reported by its decode.
            guard let f = try? File.openForReading(paths[k]) else { continue }
            f.adviseWillNeed(offset: 0, length: 0)
            try? f.close()
        }
    }
}
