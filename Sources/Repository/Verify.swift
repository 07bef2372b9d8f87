import Foundation
import Synchronization
import Archive

/// `repo verify`: re-reads every chunk of the chosen snapshots and checks
/// CRC, decryption and digest (without the key an encrypted chunk can only
/// be CRC-checked), and each index and blob against the manifest. A corrupt
/// chunk is renamed `<digest>.<n>.bad`, so the next backup that has its data
/// stores it again; every snapshot using it gets `verify_state: failed`.
public struct Verifier: Sendable {
    public let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public struct Problem: Sendable, CustomStringConvertible {
        public var snapshot: SnapshotName
        public var message: String
        public var description: String { "snapshot \(snapshot): \(message)" }
    }

    public struct Result: Sendable {
        public var snapshots: [SnapshotName: Manifest.VerifyState.State] = [:]
        public var problems: [Problem] = []
        public var chunksChecked = 0
        public var badChunks: [SHA256Digest] = []
        public var ok: Bool { problems.isEmpty }
    }

    public func verify(_ snapshots: [SnapshotName], threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                       log: @Sendable (String) -> Void = { _ in }) throws -> Result {
        var result = Result()
        // Chunks shared by many snapshots are read once.
        var checked: [SHA256Digest: Bool] = [:]
        let upid = "snapdump:\(getpid()):\(Int(Date().timeIntervalSince1970))"
        for s in snapshots {
            var problems: [String] = []
            do {
                let m = try repository.manifest(s)
                for f in m.files {
                    if f.filename.hasSuffix(".fidx") {
                        let idx: FixedIndex
                        do { idx = try repository.index(s, file: f.filename, manifest: m) } catch {
                            problems.append("\(error)")
                            continue
                        }
                        var todo: [(SHA256Digest, Int)] = []
                        var seen = Set<SHA256Digest>()
                        for (i, d) in idx.digests.enumerated() where checked[d] == nil && seen.insert(d).inserted {
                            todo.append((d, idx.chunkLength(i)))
                        }
                        let bad = checkChunks(todo, snapshot: s, threads: threads)
                        for (d, _) in todo { checked[d] = bad[d] == nil }
                        for (d, msg) in bad.sorted(by: { $0.key.hex < $1.key.hex }) {
                            log("chunk \(d.hex): \(msg)")
                            if (try? repository.chunks.markBad(d)) != nil { result.badChunks.append(d) }
                        }
                        result.chunksChecked += todo.count
                        let failed = Set(idx.digests).filter { checked[$0] == false }
                        if !failed.isEmpty {
                            problems.append("\(f.filename): \(failed.count) corrupt or missing chunk(s): " +
                                            failed.map(\.hex).sorted().prefix(5).joined(separator: ", "))
                        }
                    } else {
                        do { _ = try repository.blob(s, file: f.filename, manifest: m) } catch { problems.append("\(error)") }
                    }
                }
            } catch {
                problems.append("\(error)")
            }
            let state: Manifest.VerifyState.State = problems.isEmpty ? .ok : .failed
            result.snapshots[s] = state
            result.problems += problems.map { Problem(snapshot: s, message: $0) }
            try? repository.updateManifest(s) { $0.verifyState = Manifest.VerifyState(upid: upid, state: state) }
            log("snapshot \(s): \(state.rawValue)")
        }
        return result
    }

    /// Checks chunks in parallel; returns the bad ones with why.
    private func checkChunks(_ todo: [(SHA256Digest, Int)], snapshot: SnapshotName, threads: Int) -> [SHA256Digest: String] {
        let bad = Mutex<[SHA256Digest: String]>([:])
        let next = Atomic<Int>(0)
        let reader = ChunkReader(repository: repository, snapshot: snapshot)
        DispatchQueue.concurrentPerform(iterations: max(1, min(threads, todo.count))) { _ in
            while true {
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < todo.count else { break }
                let (d, len) = todo[i]
                do {
                    if repository.crypt == nil, let blob = try? repository.chunks.read(d),
                       let kind = DataBlob.Kind(magic: blob.prefix(8)), kind.isEncrypted {
                        _ = try blob.withUnsafeBytes { try DataBlob.check($0, object: "chunk \(d.hex)") }
                    } else {
                        _ = try reader.chunk(d, expectedLength: len)
                    }
                } catch let e as RepositoryError {
                    bad.withLock { $0[d] = e.message }
                } catch {
                    bad.withLock { $0[d] = "\(error)" }
                }
            }
        }
        return bad.withLock { $0 }
    }
}
