import Foundation
import SnapdumpSystem

/// Runs the real `snapdump` executable as a subprocess, the way a user does.
public enum SnapdumpBinary {
    public struct Result: Sendable, CustomStringConvertible {
        public var status: Int32
        public var stdout: String
        public var stderr: String

        /// Non-empty stderr lines.
        public var errorLines: [String] {
            stderr.split(separator: "\n").map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        }

        public var description: String { "exit \(status), stdout: \(stdout.debugDescription), stderr: \(stderr.debugDescription)" }
    }

    /// The `snapdump` binary every suite runs: `SNAPDUMP_BIN`, else `path("snapdump")`.
    public static var binary: String {
        if let b = ProcessInfo.processInfo.environment["SNAPDUMP_BIN"], !b.isEmpty { return b }
        return path("snapdump")
    }

    /// A built executable of the package (`snapdump`, `snapdumpd`): in
    /// `SNAPDUMP_BIN_DIR`, else beside the test bundle (`swift test` builds
    /// them into the same directory), else in the repository's `.build/debug`.
    public static func path(_ name: String) -> String {
        if let d = ProcessInfo.processInfo.environment["SNAPDUMP_BIN_DIR"], !d.isEmpty { return d + "/" + name }
        let testBinary = (CommandLine.arguments.first.map { (try? FileSystem.realPath($0)) ?? $0 }) ?? ""
        var dir = (testBinary as NSString).deletingLastPathComponent
        // On Linux the runner is `<build>/<name>PackageTests.xctest`; step out of a bundle if there is one.
        while dir.hasSuffix(".xctest") || dir.hasSuffix("/Contents/MacOS") { dir = (dir as NSString).deletingLastPathComponent }
        let beside = dir + "/" + name
        if FileManager.default.isExecutableFile(atPath: beside) { return beside }
        return SourceTree.root + "/.build/debug/" + name
    }

    /// Runs `snapdump <args>` and throws (with the whole result) unless it exits 0: for set-up steps.
    @discardableResult
    public static func must(_ args: [String], configDir: String? = nil) throws -> Result {
        let r = try run(args, configDir: configDir)
        guard r.status == 0 else { throw Failed(args: args, result: r) }
        return r
    }

    public struct Failed: Error, CustomStringConvertible {
        public var args: [String]
        public var result: Result
        public var description: String { "snapdump \(args.joined(separator: " ")): \(result)" }
    }

    /// Runs `snapdump <args>` with `--config-dir` prepended when given; never throws for a non-zero exit.
    public static func run(_ args: [String], configDir: String? = nil, environment: [String: String] = [:]) throws -> Result {
        var argv = [binary] + args
        if let configDir { argv += ["--config-dir", configDir] }
        // Keep the caller's SNAPDUMP_CONFIG_DIR from leaking into the child.
        var env = environment
        if env["SNAPDUMP_CONFIG_DIR"] == nil { env["SNAPDUMP_CONFIG_DIR"] = "" }
        let o = try Command.capture(argv, environment: env)
        return Result(status: o.status, stdout: o.stdout, stderr: o.stderr)
    }
}

/// With `--output-format json`, `backup` writes its task log to stderr as JSON
/// events (`{"type":"log","level":"INFO","message":…}`); this gives the text
/// lines back (`INFO: …`), leaving lines that are not log events as they are.
public enum TaskLogEvents {
    public static func text(_ stderr: String) -> String {
        stderr.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], o["type"] as? String == "log",
                  let level = o["level"] as? String, let message = o["message"] as? String else { return String(line) }
            return "\(level): \(message)"
        }.joined(separator: "\n")
    }
}
