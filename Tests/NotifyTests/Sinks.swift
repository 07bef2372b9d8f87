import Foundation
import SnapdumpSystem
import TestSupport

/// A real server started by a test (scripts/test-servers/*.py), stopped by PID.
final class Sink {
    let process = Process()
    let dir: String
    let port: Int

    static let scripts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/test-servers").path

    struct Unavailable: Error, CustomStringConvertible { var description: String }

    /// Starts `script` with `args` and waits for the port it listens on.
    init(_ script: String, _ args: [String] = []) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") else {
            throw Unavailable(description: "/usr/bin/python3 is missing (scripts/install-deps.sh installs it)")
        }
        dir = try Integration.scratchDirectory("sink")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["\(Self.scripts)/\(script)", dir] + args
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The script writes DIR/port (renamed into place) once it listens.
        var found: Int?
        for _ in 0..<200 where found == nil {
            if let t = try? String(contentsOfFile: dir + "/port", encoding: .utf8) { found = Int(t) }
            if found == nil { if !process.isRunning { break }; usleep(50_000) }
        }
        guard let p = found else {
            // SIGKILL: the test runner may block SIGTERM, and a spawned child inherits that mask.
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
            throw Unavailable(description: "\(script) did not start within 10 s (is python3-aiosmtpd installed? scripts/install-deps.sh)")
        }
        port = p
    }

    func stop() {
        // SIGKILL: the test runner may block SIGTERM, and a spawned child inherits that mask.
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The `n`th request or mail the sink received (waits briefly: delivery is synchronous, the write is not).
    func file(_ name: String) -> String? {
        for _ in 0..<50 {
            if let t = try? String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8) { return t }
            usleep(100_000)
        }
        return nil
    }

    func count(_ ext: String) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(ext) }.count
    }

    func json(_ name: String) -> [String: Any]? {
        file(name).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }
}

/// A self-signed certificate for `localhost`, trusted through SSL_CERT_FILE.
struct TestCertificate {
    let cert: String
    let key: String

    init(in dir: String) throws {
        cert = dir + "/cert.pem"
        key = dir + "/key.pem"
        _ = try Command.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                             "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
    }
}
