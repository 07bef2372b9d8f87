import Foundation

/// Progress of reading an archive (restore, `vma extract`, `vma verify`) in
/// the lines Proxmox's `vma` prints during qmrestore:
/// `progress 7% (read 1879048192 bytes, duration 3 sec)` at each percent step
/// (at most one line every `interval` seconds, always the last one), then
/// `total bytes read …, sparse bytes … (x%)`.
public final class ReadProgress: @unchecked Sendable {
    // @unchecked: fed by the one thread that reads the archive.
    private let total: UInt64
    private let interval: TimeInterval
    private let emit: (String) -> Void
    private let started: Date
    /// The first line comes after `interval` (or at the end), not at 0 %: a
    /// quick read, or one that fails at once, prints no progress at all.
    private var lastLine: Date
    private var lastPercent = -1
    private var calls: UInt = 0
    public private(set) var bytesRead: UInt64 = 0
    public private(set) var sparseBytes: UInt64 = 0

    public init(total: UInt64, interval: TimeInterval = 3, emit: @escaping (String) -> Void) {
        self.total = total
        self.interval = interval
        self.emit = emit
        started = Date()
        lastLine = started
    }

    func add(_ c: VMAReader.Cluster) {
        let valid = UInt64(c.validBytes)
        add(bytes: valid, sparse: valid - min(valid, UInt64(c.mask.nonzeroBitCount * VMAFormat.blockSize)), perCluster: true)
    }

    func add(_ run: VMAReader.ZeroRun) {
        add(bytes: run.validBytes, sparse: run.validBytes)
    }

    /// `bytes` more read, `sparse` of them zeros (a repository restore reports whole chunks).
    public func add(bytes: UInt64, sparse: UInt64) {
        add(bytes: bytes, sparse: sparse, perCluster: false)
    }

    private func add(bytes: UInt64, sparse: UInt64, perCluster: Bool) {
        bytesRead += bytes
        sparseBytes += sparse
        guard total > 0 else { return }
        let percent = Int(bytesRead * 100 / total)
        guard percent != lastPercent else { return }
        // Called for every cluster, the clock is read once every 256 of them (16 MiB), and at the end;
        // for a run of zero clusters or a repository chunk at each call.
        calls &+= 1
        guard calls & 255 == 0 || !perCluster || bytesRead >= total else { return }
        let now = Date()
        if now.timeIntervalSince(lastLine) >= interval || bytesRead >= total {
            emit("progress \(percent)% (read \(bytesRead) bytes, duration \(Int(now.timeIntervalSince(started))) sec)")
            lastPercent = percent
            lastLine = now
        }
    }

    /// The closing line.
    public func finish() {
        let pct = bytesRead > 0 ? Double(sparseBytes) * 100 / Double(bytesRead) : 0
        emit("total bytes read \(bytesRead), sparse bytes \(sparseBytes) (\(String(format: "%.3g", pct))%)")
    }
}
