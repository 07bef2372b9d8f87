#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SnapdumpSystem
import Testing
import TestSupport

/// Every file snapdump creates goes through `File.open`/`File.createNew`/
/// `FileSystem.writeAtomically`: root-only modes, never through a planted
/// symlink, never onto an existing name, temp names nobody can predict.
@Suite("File creation: modes, symlinks, O_EXCL, temp names")
struct FileCreationTests {
    let dir: String
    init() throws { dir = try Integration.scratchDirectory("files") }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0o7777
    }

    /// A file holding "precious" that an attacker wants root to overwrite.
    func victim() throws -> String {
        let v = dir + "/victim"
        try "precious".write(toFile: v, atomically: false, encoding: .utf8)
        return v
    }

    @Test func createNewRefusesAnExistingFileAndAnySymlink() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = try victim()
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: v)
        try FileManager.default.createSymbolicLink(atPath: dir + "/dangling", withDestinationPath: dir + "/nowhere")
        for name in ["victim", "link", "dangling"] {
            #expect(throws: SystemError.self) { _ = try File.createNew(dir + "/" + name) }
            do { _ = try File.createNew(dir + "/" + name) } catch let e as SystemError { #expect(e.errno == EEXIST, "\(name): \(e)") }
        }
        #expect(!FileSystem.exists(dir + "/nowhere"), "created through a dangling symlink")
        #expect(try FileSystem.readText(v) == "precious")
        let f = try File.createNew(dir + "/fresh")
        try f.close()
        #expect(mode(dir + "/fresh") == 0o600)
    }

    @Test func openWithCreateNeverFollowsASymlink() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = try victim()
        try FileManager.default.createSymbolicLink(atPath: dir + "/app.log", withDestinationPath: v)
        do {
            _ = try File.open(dir + "/app.log", O_WRONLY | O_CREAT | O_APPEND)
            Issue.record("opened a symlink for appending")
        } catch let e as SystemError {
            #expect(e.errno == ELOOP, "\(e)")
        }
        #expect(throws: SystemError.self) { _ = try File.openForAppending(dir + "/app.log") }
        #expect(try FileSystem.readText(v) == "precious")
        // Reading through a symlink (a zvol's /dev/zvol/… link) still works.
        #expect(try File.openForReading(dir + "/app.log").size() == 8)
    }

    @Test func writeAtomicallyUsesAnUnpredictableTempAndRootOnlyMode() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = try victim()
        let target = dir + "/storage.cfg"
        // The old temp name was `<path>.tmp.<pid>`: a link planted there received the contents.
        try FileManager.default.createSymbolicLink(atPath: "\(target).tmp.\(getpid())", withDestinationPath: v)
        try FileSystem.writeAtomically(target, "dir: local\n")
        #expect(try FileSystem.readText(v) == "precious")
        #expect(try FileSystem.readText(target) == "dir: local\n")
        #expect(mode(target) == 0o600)
        let temps = try FileSystem.list(dir).filter { $0.hasPrefix("storage.cfg.tmp.") }
        #expect(temps == ["storage.cfg.tmp.\(getpid())"], "only the planted link remains: \(temps)")
        // Two temp names are never the same.
        let (a, pa) = try FileSystem.createTemporary(beside: target)
        let (b, pb) = try FileSystem.createTemporary(beside: target)
        try a.close(); try b.close()
        #expect(pa != pb && pa.count == target.count + 5 + 16)
    }

    @Test func createdDirectoriesAreRootOnly() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileSystem.createDirectory(dir + "/run/qemu")
        #expect(mode(dir + "/run") == 0o700)
        #expect(mode(dir + "/run/qemu") == 0o700)
        // An existing directory keeps its mode (a --dumpdir the admin made).
        try FileManager.default.createDirectory(atPath: dir + "/shared", withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o755])
        try FileSystem.createDirectory(dir + "/shared")
        #expect(mode(dir + "/shared") == 0o755)
    }

    @Test func lockFileIsRootOnlyAndNeverASymlink() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = try victim()
        try FileManager.default.createSymbolicLink(atPath: dir + "/vzdump.lock", withDestinationPath: v)
        #expect(throws: SystemError.self) { _ = try FileLock.acquire(dir + "/vzdump.lock", timeout: 0) }
        #expect(try FileSystem.readText(v) == "precious", "the lock's pid was written into the symlink's target")
        let lock = try FileLock.acquire(dir + "/real.lock", timeout: 0)
        #expect(mode(dir + "/real.lock") == 0o600)
        lock.unlock()
    }
}
