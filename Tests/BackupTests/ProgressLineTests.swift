import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// vzdump's progress lines in the task log, qmrestore's in restore and the
/// vma tools, JSON events with --output-format json, and restore --bwlimit.
@Suite(.serialized) struct ProgressLineTests {
    let scratch: String
    var configDir: String { scratch + "/etc" }
    var store: String { scratch + "/store" }

    init() throws {
        scratch = try Integration.scratchDirectory("progress")
        try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
    }

    @discardableResult
    func must(_ args: [String], configDir: String? = nil) throws -> SnapdumpBinary.Result {
        let r = try SnapdumpBinary.run(args, configDir: configDir ?? self.configDir, environment: ["TZ": "UTC"])
        #expect(r.status == 0, "snapdump \(args.joined(separator: " ")): \(r)")
        return r
    }

    /// A 64 MiB disk: 16 MiB of random data at the start, the rest zero.
    func guestWithData() throws {
        try must(["storage", "add", "dir", "local", "--path", store, "--content", "images,backup"])
        try must(["vm", "create", "100", "--name", "web", "--memory", "128", "--scsi0", "local:64M"])
        let f = try File.open(store + "/images/100/vm-100-disk-0.raw", O_WRONLY)
        var bytes = [UInt8](repeating: 0, count: 16 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: (i &* 2654435761) >> 13) }
        try f.writeAll(bytes)
        try f.close()
    }

    @Test func backupLogHasVzdumpProgressAndSparseLines() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try guestWithData()
        let r = try must(["backup", "100", "--mode", "stop", "--storage", "local"])
        let lines = r.stderr.split(separator: "\n").map(String.init)
        let last = try #require(lines.last { $0.contains("% (") })
        // INFO: 100% (64.00 MiB of 64.00 MiB) in 0s, read: … MiB/s, write: … MiB/s
        #expect(last.range(of: #"^INFO: 100% \(64\.00 MiB of 64\.00 MiB\) in \d+s, read: [0-9.]+ [KMG]?i?B/s, write: [0-9.]+ [KMG]?i?B/s$"#,
                            options: .regularExpression) != nil, "\(last)")
        #expect(lines.contains("INFO: backup is sparse: 48.00 MiB (75%) total zero data"), "\(r.stderr)")
        // The same lines are in the task log file.
        let log = try #require(try FileManager.default.contentsOfDirectory(atPath: store + "/dump").first { $0.hasSuffix(".log") })
        let text = try String(contentsOfFile: store + "/dump/" + log, encoding: .utf8)
        #expect(text.contains("INFO: backup is sparse: 48.00 MiB (75%) total zero data") && text.contains("INFO: 100% (64.00 MiB"))
    }

    @Test func jsonOutputStreamsEventsOnStderrAndTheSummaryOnStdout() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try guestWithData()
        let r = try must(["backup", "100", "--mode", "stop", "--storage", "local", "--output-format", "json"])
        var progress: [[String: Any]] = []
        for line in r.stderr.split(separator: "\n") {
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
            #expect(obj["type"] as? String == "log" || obj["type"] as? String == "progress")
            if obj["type"] as? String == "progress" { progress.append(obj) }
        }
        let final = try #require(progress.last)
        #expect(final["percent"] as? Int == 100 && final["bytes_total"] as? Int == 64 << 20 && final["zero_bytes"] as? Int == 48 << 20)
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(summary.first?["ok"] as? Bool == true)
    }

    @Test func restoreAndVmaToolsPrintQmrestoreProgressAndBwlimitHolds() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try guestWithData()
        try must(["backup", "100", "--mode", "stop", "--storage", "local", "--compress", "zstd"])
        let archive = store + "/dump/" + (try #require(try FileManager.default.contentsOfDirectory(atPath: store + "/dump").first { $0.hasSuffix(".vma.zst") }))
        let closing = "total bytes read 67108864, sparse bytes 50331648 (75%)"
        let verify = try SnapdumpBinary.run(["vma", "verify", archive])
        #expect(verify.status == 0 && verify.stderr.contains("progress 100% (read 67108864 bytes, duration ") && verify.stderr.contains(closing), "\(verify)")
        let extract = try SnapdumpBinary.run(["vma", "extract", archive, scratch + "/x"])
        #expect(extract.status == 0 && extract.stderr.contains(closing), "\(extract)")

        // 64 MiB at 16 MiB/s cannot take less than ~4 s (the limit is an average from the start).
        let t0 = Date()
        let restore = try must(["restore", archive, "200", "--storage", "local", "--bwlimit", "16384"])
        let seconds = Date().timeIntervalSince(t0)
        #expect(seconds >= 3.5, "restore at 16 MiB/s took \(seconds) s")
        #expect(restore.stderr.contains("INFO: restore limited to 16384 KiB/s"))
        #expect(restore.stderr.contains("INFO: progress 100% (read 67108864 bytes, duration ") && restore.stderr.contains("INFO: " + closing))
        let bad = try SnapdumpBinary.run(["restore", archive, "201", "--bwlimit", "-1"], configDir: configDir)
        #expect(bad.status != 0 && !FileManager.default.fileExists(atPath: configDir + "/qemu/201.conf"))
    }
}
