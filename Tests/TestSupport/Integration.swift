import Foundation
import SnapdumpSystem
import Testing

/// Integration tests use real things (loop filesystems, zfs-fuse, QEMU).
/// `scripts/fixtures/setup.sh` prepares them and writes their locations to an
/// environment file; tests find them here. When `SNAPDUMP_INTEGRATION=1` (CI
/// and `make test`), a missing fixture is a failure, never a silent skip.
public enum Integration {
    public static var required: Bool {
        ProcessInfo.processInfo.environment["SNAPDUMP_INTEGRATION"] == "1"
    }

    /// The fixture environment: process environment, then the file that
    /// `scripts/fixtures/setup.sh` writes.
    public static let fixtureEnvironment: [String: String] = {
        var env: [String: String] = [:]
        let e = ProcessInfo.processInfo.environment
        // setup.sh's file, and the Ceph cluster's that scripts/fixtures/ceph.sh writes.
        let files = [e["SNAPDUMP_FIXTURE_ENV"] ?? "/run/snapdump-test/fixtures.env",
                     e["SNAPDUMP_CEPH_ENV"] ?? "/run/snapdump-test/ceph.env"]
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let eq = line.firstIndex(of: "=") else { continue }
                env[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
        }
        return env.merging(ProcessInfo.processInfo.environment.filter { $0.key.hasPrefix("SNAPDUMP_") }) { $1 }
    }()

    /// The value of a fixture variable (a mount point, a pool name), or nil.
    public static func fixture(_ name: String) -> String? {
        guard let v = fixtureEnvironment[name], !v.isEmpty else { return nil }
        return v
    }

    /// Whether a test needing `names` can run. Without SNAPDUMP_INTEGRATION=1
    /// missing fixtures disable the test; with it, they are reported by `require`.
    public static func available(_ names: String...) -> Bool {
        required || names.allSatisfy { fixture($0) != nil }
    }

    public struct Missing: Error, CustomStringConvertible {
        public var what: String
        public var description: String { "integration fixture missing: \(what) (run scripts/fixtures/setup.sh)" }
    }

    /// The fixture's value; throws when it is missing.
    public static func require(_ name: String) throws -> String {
        guard let v = fixture(name) else { throw Missing(what: name) }
        return v
    }

    /// The fixtures a test needs, checked where the test starts: a missing one
    /// fails it under SNAPDUMP_INTEGRATION=1 and otherwise cancels it, so it
    /// is reported as skipped — never as passed. Returns the values in order.
    @discardableResult
    public static func need(_ names: String...) throws -> [String] {
        var values: [String] = []
        for name in names {
            if let v = fixture(name) { values.append(v); continue }
            if required { throw Missing(what: name) }
            // Cancelled cases of a parameterized test are not listed by name: say it here too.
            print("skipped: fixture \(name) is not set up (scripts/fixtures/setup.sh)")
            try Test.cancel("fixture \(name) is not set up (scripts/fixtures/setup.sh); skipped")
        }
        return values
    }

    /// A fresh scratch directory under `base` (default /tmp), removed by the caller.
    public static func scratchDirectory(_ label: String, under base: String = NSTemporaryDirectory()) throws -> String {
        let dir = (base as NSString).appendingPathComponent("snapdump-\(label)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}
