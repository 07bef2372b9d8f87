import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// `--output-format text|json|json-pretty` on every command that lists or
/// shows something: valid JSON, the documented field names, typed values.
@Suite(.serialized) struct OutputFormatTests {
    let scratch: String
    var configDir: String { scratch + "/etc" }

    init() throws {
        scratch = try Integration.scratchDirectory("output")
        try FileManager.default.createDirectory(atPath: scratch + "/store", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
    }

    @discardableResult
    func must(_ args: [String]) throws -> String {
        let r = try SnapdumpBinary.run(args, configDir: configDir, environment: ["TZ": "UTC"])
        #expect(r.status == 0, "snapdump \(args.joined(separator: " ")): \(r)")
        return r.stdout
    }

    func json(_ args: [String], pretty: Bool = false) throws -> Any {
        let out = try must(args + ["--output-format", pretty ? "json-pretty" : "json"])
        #expect(pretty == out.contains("\n  "), "pretty printing: \(out)")
        return try JSONSerialization.jsonObject(with: Data(out.utf8))
    }

    func objects(_ args: [String]) throws -> [[String: Any]] {
        try #require(try json(args) as? [[String: Any]], "not an array of objects")
    }

    @Test func everyListingCommandSpeaksJSON() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try must(["storage", "add", "dir", "local", "--path", scratch + "/store", "--content", "images,backup"])
        try must(["vm", "create", "100", "--name", "web", "--memory", "128", "--scsi0", "local:4M"])
        try must(["backup", "100", "--mode", "stop", "--storage", "local"])

        let storages = try objects(["storage", "list"])
        #expect(storages.first?["storage"] as? String == "local")
        #expect(storages.first?["content"] as? [String] == ["backup", "images"])
        #expect(storages.first?["enabled"] as? Bool == true)

        let status = try objects(["storage", "status"]).first
        #expect((status?["total"] as? Int ?? 0) > 0 && status?["active"] as? Bool == true)

        let vols = try objects(["volume", "list", "local"])
        #expect(vols.first?["volid"] as? String == "local:100/vm-100-disk-0.raw" && vols.first?["size"] as? Int == 4 << 20)

        let vms = try objects(["vm", "list"])
        #expect(vms.first?["vmid"] as? Int == 100 && vms.first?["status"] as? String == "stopped")
        #expect((vms.first?["disks"] as? [[String: String]])?.first?["key"] == "scsi0")

        let st = try #require(try json(["vm", "status", "100"]) as? [String: Any])
        #expect(st["status"] as? String == "stopped" && st["pid"] is NSNull)

        let cfg = try #require(try json(["vm", "config", "100"], pretty: true) as? [String: String])
        #expect(cfg["name"] == "web" && cfg["scsi0"]?.hasPrefix("local:100/vm-100-disk-0.raw") == true)

        let archives = try objects(["backup", "list", "local"])
        let a = try #require(archives.first)
        #expect((a["volid"] as? String)?.hasPrefix("local:backup/vzdump-qemu-100-") == true, "\(a)")
        #expect(a["vmid"] as? Int == 100 && a["protected"] as? Bool == false && (a["ctime"] as? Int ?? 0) > 1_700_000_000)

        let pruned = try objects(["prune", "local", "--keep-last", "1", "--dry-run"])
        #expect(pruned.first?["mark"] as? String == "keep")

        let path = try #require(a["path"] as? String)
        let listed = try SnapdumpBinary.run(["vma", "list", path, "--output-format", "json"])
        let vma = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])
        #expect((vma["devices"] as? [[String: Any]])?.first?["name"] as? String == "drive-scsi0")

        try must(["job", "add", "--id", "nightly", "--schedule", "02:00", "--vmid", "100", "--storage", "local"])
        let jobs = try objects(["job", "list"])
        #expect(jobs.first?["id"] as? String == "nightly" && jobs.first?["enabled"] as? Bool == true)
        #expect(jobs.first?["next-run"] is Int && jobs.first?["last-run"] is NSNull)
        let job = try #require(try json(["job", "show", "nightly"]) as? [String: Any])
        #expect(job["schedule"] as? String == "02:00" && job["last-run"] is NSNull)

        let analyzed = try SnapdumpBinary.run(["schedule", "analyze", "02:00", "--iterations", "2", "--output-format", "json"],
                                              environment: ["TZ": "UTC"])
        let fired = try #require(try JSONSerialization.jsonObject(with: Data(analyzed.stdout.utf8)) as? [[String: Any]])
        #expect(fired.count == 2 && (fired[0]["time"] as? String)?.hasSuffix("02:00:00") == true)

        // text stays the table it was
        let text = try must(["vm", "list"])
        #expect(text.hasPrefix("VMID  Name  Status"))
        let bad = try SnapdumpBinary.run(["vm", "list", "--output-format", "yaml"], configDir: configDir)
        #expect(bad.status != 0)
    }
}
