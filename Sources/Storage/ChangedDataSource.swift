import Foundation
import Synchronization

/// A reader of a new snapshot for an incremental backup whose changed ranges
/// came with the change report itself (`ChangedData`): those are served from
/// memory; anything else (a chunk read whole, a range the report did not
/// carry) from `fallback`, opened on first need — so what is read is always
/// the snapshot's content, and the snapshot is opened only when it must be.
public final class ChangedDataSource: BlockSource, Sendable {
    public let size: UInt64
    public let name: String
    private let data: ChangedData
    private let state: Mutex<State>

    private struct State: ~Copyable {
        var fallback: (any BlockSource)?
        var open: (@Sendable () throws -> any BlockSource)?
        var onClose: (@Sendable () -> Void)?
        /// Bytes read through the fallback (for tests and the log: none when the report carried everything read).
        var fallbackBytes: UInt64 = 0
    }

    /// `onClose`: runs once at `close()`, after the fallback is closed.
    public init(data: ChangedData, name: String, fallback: @escaping @Sendable () throws -> any BlockSource,
                onClose: (@Sendable () -> Void)? = nil) {
        self.data = data
        self.size = data.size
        self.name = name
        state = Mutex(State(fallback: nil, open: fallback, onClose: onClose))
    }

    /// Bytes read so far that the change report did not carry.
    public var bytesFromFallback: UInt64 { state.withLock { $0.fallbackBytes } }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard offset < size, buffer.count > 0 else { return 0 }
        let want = Int(min(UInt64(buffer.count), size - offset))
        let (segment, next) = data.lookup(offset)
        if let segment {
            let n = Int(min(UInt64(want), segment.end - offset))
            if let bytes = segment.bytes {
                let from = bytes.startIndex + Int(offset - segment.offset)
                bytes[from..<from + n].withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
            } else {
                buffer.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: n)
            }
            return n
        }
        // Not carried: from the snapshot, up to where carried data starts again.
        let n = next.map { Int(min(UInt64(want), $0 - offset)) } ?? want
        return try state.withLock { s in
            if s.fallback == nil, let open = s.open {
                s.fallback = try open()
                s.open = nil
            }
            guard let f = s.fallback else { throw StorageError(.backend, "\(name): read after close") }
            guard f.size == size else {
                throw StorageError(.backend, "\(name) is \(f.size) bytes, the change report said \(size)")
            }
            let got = try f.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
            s.fallbackBytes += UInt64(got)
            return got
        }
    }

    /// All data: a superset is correct (every range asked for is read, from memory where it can be).
    public func allocation(offset: UInt64, length: UInt64) throws -> [AllocationRange] {
        let end = min(size, offset + length)
        return offset < end ? [AllocationRange(offset: offset, length: end - offset, kind: .data)] : []
    }

    public func close() throws {
        let (fallback, onClose) = state.withLock { s in
            defer { s.fallback = nil; s.open = nil; s.onClose = nil }
            return (s.fallback, s.onClose)
        }
        var failure: (any Error)?
        do { try fallback?.close() } catch { failure = error }
        onClose?()
        if let failure { throw failure }
    }
}
