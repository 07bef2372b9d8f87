#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem

/// The source checkout this test code belongs to (not the backup `Repository` module).
public enum SourceTree {
    public static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }
}

/// The project's test guest (scripts/test-guest/build.sh): kernel, initramfs
/// and the record checker. One locator for every suite.
public enum TestGuestImage {
    public struct Files: Sendable {
        public var directory: String
        public var kernel: String { directory + "/vmlinuz" }
        public var initrd: String { directory + "/initramfs.gz" }
        public var checker: String { directory + "/snapdump-record-check" }
    }

    public static var buildScript: String { SourceTree.root + "/scripts/test-guest/build.sh" }

    /// SNAPDUMP_GUEST_DIR: where build.sh puts (or has put) its outputs.
    public static var outputDirectory: String? { Integration.fixture("SNAPDUMP_GUEST_DIR") }

    /// Whether a test guest can be had: built already, or buildable here.
    public static var obtainable: Bool {
        FileSystem.exists(buildScript) || outputDirectory.map { FileSystem.exists($0 + "/vmlinuz") } ?? false
    }

    /// Builds the guest when the builder is in the repository (idempotent, fast
    /// when up to date) into SNAPDUMP_GUEST_DIR or scripts/test-guest/out, else
    /// uses SNAPDUMP_GUEST_DIR as it is. Blocks: call it off the cooperative pool.
    public static func files() throws -> Files {
        let dir: String
        if FileSystem.exists(buildScript) {
            dir = outputDirectory ?? SourceTree.root + "/scripts/test-guest/out"
            try Command.run([buildScript, dir])
        } else if let d = outputDirectory {
            dir = d
        } else {
            throw HarnessError("test guest missing: no \(buildScript) and no SNAPDUMP_GUEST_DIR")
        }
        let f = Files(directory: dir)
        for p in [f.kernel, f.initrd] where !FileSystem.exists(p) { throw HarnessError("test guest: \(p) missing") }
        return f
    }

    public static func files() async throws -> Files {
        try await Blocking.run("build-test-guest") { try files() }
    }
}

/// The workload's console heartbeats, `HB <seq>` lines every few milliseconds.
public enum Heartbeats {
    /// Sequence numbers of the complete `HB <seq>` lines of a console log (a
    /// last line without its newline may be half written and is left out).
    public static func parse(_ console: String) -> [Int] {
        Console.completeLines(console).compactMap { l in
            let s = l.trimmingCharacters(in: .whitespacesAndNewlines)
            return s.hasPrefix("HB ") ? Int(s.dropFirst(3)) : nil
        }
    }

    /// The last heartbeat in the console log at `path`, or 0.
    public static func last(inConsole path: String) -> Int {
        parse((try? FileSystem.readText(path)) ?? "").last ?? 0
    }
}

/// Removal of what a test's storages left: btrfs subvolumes (read-only
/// snapshots included, which `rm -r` cannot remove) deepest first, then the tree.
public enum StorageCleanup {
    public static func remove(_ root: String) {
        deleteSubvolumes(under: root)
        try? FileManager.default.removeItem(atPath: root)
    }

    /// btrfs subvolumes (inode 256) at or below `root`, deepest first.
    public static func deleteSubvolumes(under root: String) {
        guard FileSystem.isDirectory(root) else { return }
        var subvolumes: [String] = []
        if let e = FileManager.default.enumerator(atPath: root) {
            while let f = e.nextObject() as? String {
                let p = "\(root)/\(f)"
                var st = stat()
                if lstat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_ino == 256 { subvolumes.append(p) }
            }
        }
        for s in subvolumes.sorted(by: { $0.count > $1.count }) {
            _ = try? Command.capture(["btrfs", "-q", "subvolume", "delete", s])
        }
    }
}

/// The end of a test's guests: every QEMU serving a socket in `runDir/qemu`
/// (found by its pidfile, verified by its command line naming that socket,
/// never by program name) gets SIGKILL and is waited for.
public enum GuestCleanup {
    public static func killQEMUs(runDir: String) {
        let qemuDir = runDir + "/qemu"
        for name in (try? FileSystem.list(qemuDir)) ?? [] where name.hasSuffix(".pid") {
            let vmid = String(name.dropLast(4))
            guard let text = try? FileSystem.readText("\(qemuDir)/\(name)"),
                  let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { continue }
            let socket = "\(qemuDir)/\(vmid).qmp"
            guard Processes.isAlive(pid), Processes.commandLine(pid).contains(where: { $0.contains(socket) }) else { continue }
            kill(pid, SIGKILL)
            for _ in 0..<200 where Processes.isAlive(pid) { usleep(50_000) }
        }
    }
}
