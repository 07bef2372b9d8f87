#if canImport(Glibc)
import Glibc
#endif
import Archive
import Foundation
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

/// What a backup leaves on disk: readable by root only (DESIGN.md invariant
/// 7), never written through a planted symlink or onto another backup's
/// files, one log per archive.
@Suite("Backup files: modes, symlinks, one log per archive", .serialized)
struct BackupFilesTests {
    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0o7777
    }

    /// A config dir with a `dir` storage `local` (dump dir not created yet) and a stopped VM 100 with a 4 MiB disk.
    static func world(_ label: String) throws -> (dir: String, run: ([String]) throws -> SnapdumpBinary.Result) {
        let dir = try Integration.scratchDirectory(label)
        try FileSystem.createDirectory(dir + "/store")
        let run: ([String]) throws -> SnapdumpBinary.Result = { args in
            try SnapdumpBinary.run(args, configDir: dir + "/etc", environment: ["TZ": "UTC"])
        }
        for args in [["storage", "add", "dir", "local", "--path", dir + "/store", "--content", "images,backup"],
                     ["vm", "create", "100", "--name", "files", "--scsi0", "local:4M"]] {
            let r = try run(args)
            try #require(r.status == 0, "\(args): \(r)")
        }
        return (dir, run)
    }

    @Test func backupDataAndDirectoriesAreRootOnly() throws {
        let (dir, run) = try Self.world("perm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["backup", "100", "--storage", "local", "--compress", "zstd", "--notes-template", "{{guestname}}"])
        try #require(r.status == 0, "\(r)")
        let dump = dir + "/store/dump"
        let names = try FileSystem.list(dump)
        let archive = try #require(names.first { $0.hasSuffix(".vma.zst") }, "\(names)")
        let log = try #require(names.first { $0.hasSuffix(".log") }, "\(names)")
        #expect(names.contains(archive + ".notes"), "\(names)")
        for f in [archive, log, archive + ".notes"] {
            #expect(Self.mode(dump + "/" + f) == 0o600, "\(f) is \(String(Self.mode(dump + "/" + f), radix: 8))")
        }
        #expect(Self.mode(dump) == 0o700, "dump dir is \(String(Self.mode(dump), radix: 8))")
        for f in ["etc/storage.cfg", "etc/qemu/100.conf", "store/images/100/vm-100-disk-0.raw"] {
            #expect(Self.mode(dir + "/" + f) == 0o600, "\(f) is \(String(Self.mode(dir + "/" + f), radix: 8))")
        }
        #expect(Self.mode(dir + "/store/images/100") == 0o700)

        let target = dir + "/extracted"
        let x = try SnapdumpBinary.run(["vma", "extract", dump + "/" + archive, target])
        try #require(x.status == 0, "\(x)")
        #expect(Self.mode(target) == 0o700)
        let extracted = try FileSystem.list(target)
        #expect(extracted.contains("disk-drive-scsi0.raw"), "\(extracted)")
        for f in extracted { #expect(Self.mode(target + "/" + f) == 0o600, "\(f) is \(String(Self.mode(target + "/" + f), radix: 8))") }
    }

    @Test func taskLogIsNeverAppendedThroughASymlinkNorShared() throws {
        let dir = try Integration.scratchDirectory("tasklog")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let victim = dir + "/shadow"
        try "root:x:0:0\n".write(toFile: victim, atomically: false, encoding: .utf8)
        let predicted = dir + "/vzdump-qemu-100-2026_11_30-02_00_00.log"
        try FileManager.default.createSymbolicLink(atPath: predicted, withDestinationPath: victim)
        let log = TaskLog(echo: false)
        log.info("Starting Backup of VM 100 (qemu)")
        #expect(throws: SystemError.self) { try log.attach(file: predicted) }
        #expect(try FileSystem.readText(victim) == "root:x:0:0\n")

        // An existing log (another backup's) is not appended to either.
        let other = dir + "/other.log"
        try "INFO: the first backup\n".write(toFile: other, atomically: false, encoding: .utf8)
        #expect(throws: SystemError.self) { try TaskLog(echo: false).attach(file: other) }
        #expect(try FileSystem.readText(other) == "INFO: the first backup\n")
    }

    @Test func archiveDatIsCreatedExclusively() throws {
        let dir = try Integration.scratchDirectory("dat")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let victim = dir + "/victim"
        try "precious".write(toFile: victim, atomically: false, encoding: .utf8)
        let dat = dir + "/vzdump-qemu-100-2026_11_30-02_00_00.vma.dat"
        try FileManager.default.createSymbolicLink(atPath: dat, withDestinationPath: victim)
        #expect(throws: ArchiveError.self) {
            _ = try VMAWriter(path: dat, ctime: 0, devices: [VMADevice(id: 1, name: "drive-scsi0", size: 65536)],
                              configs: [], reservedMetadataSize: nil, compression: .none)
        }
        #expect(try FileSystem.readText(victim) == "precious")
        #expect(FileSystem.exists(dat), "the planted link is not ours to remove")
    }

    /// Names have one-second resolution: a name whose log, archive or `.dat`
    /// exists is skipped for the next second, and the new log is claimed.
    @Test func claimNameWaitsForAFreeSecond() async throws {
        let dir = try Integration.scratchDirectory("claim")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        func name(_ s: Double) -> ArchiveName { ArchiveName(vmid: 100, date: t0.addingTimeInterval(s), compression: .zstd) }
        try "first backup's log\n".write(toFile: dir + "/" + name(0).logName, atomically: false, encoding: .utf8)
        try "archive".write(toFile: dir + "/" + name(1).fileName, atomically: false, encoding: .utf8)
        var gz = name(2)
        gz.compression = .gzip
        try "being written".write(toFile: dir + "/" + gz.temporaryName, atomically: false, encoding: .utf8)
        let times = Times([0.999, 1.999, 2.999, 3.999].map { t0.addingTimeInterval($0) })
        let log = TaskLog(echo: false)
        let (claimed, date) = await BackupJob.claimName(vmid: 100, dumpdir: dir, compression: .zstd, log: log, clock: times.next)
        #expect(claimed == name(3))
        #expect(date == t0.addingTimeInterval(3.999))
        log.info("second backup")
        log.detach()
        #expect(try FileSystem.readText(dir + "/" + name(0).logName) == "first backup's log\n")
        #expect(try FileSystem.readText(dir + "/" + name(3).logName).hasSuffix("INFO: second backup\n"))
        #expect(Self.mode(dir + "/" + name(3).logName) == 0o600)
    }

    /// The real thing: foreign files at the names of the coming seconds; the
    /// backup skips them, writes its own archive and log, touches none of them.
    @Test func secondBackupInTheSameSecondGetsItsOwnNames() throws {
        let (dir, run) = try Self.world("collide")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dump = dir + "/store/dump"
        try FileSystem.createDirectory(dump)
        let utc = TimeZone(identifier: "UTC")!
        let now = Date()
        func name(_ s: Int) -> ArchiveName { ArchiveName(vmid: 100, date: now.addingTimeInterval(Double(s)), compression: .zstd, timeZone: utc) }
        var planted: [String: String] = [:]
        planted[name(0).logName] = "INFO: the first job's backup of VM 100\n"
        planted[name(1).fileName] = "an archive without its log"
        planted[name(2).logName] = "INFO: another job\n"
        for (f, text) in planted { try text.write(toFile: dump + "/" + f, atomically: false, encoding: .utf8) }

        let r = try run(["backup", "100", "--storage", "local", "--compress", "zstd"])
        #expect(r.status == 0, "\(r)")
        for (f, text) in planted { #expect(try FileSystem.readText(dump + "/" + f) == text, "\(f) was changed") }
        let archives = try FileSystem.list(dump).filter { $0.hasSuffix(".vma.zst") && !planted.keys.contains($0) }
        let all = try FileSystem.list(dump)
        #expect(archives.count == 1, "\(all)")
        if let a = archives.first, let n = ArchiveName(fileName: a) {
            let log = try FileSystem.readText(dump + "/" + n.logName)
            #expect(log.components(separatedBy: "Starting Backup of VM 100").count == 2, "\(log)")
            #expect(!planted.keys.contains(n.logName))
        }
        #expect(!r.stderr.contains("already exists"), "\(r)")
    }
}

/// A clock that returns the given times one after the other (then the last one).
final class Times: @unchecked Sendable {
    // @unchecked: used from one test task.
    private var times: [Date]
    init(_ t: [Date]) { times = t }
    func next() -> Date { times.count > 1 ? times.removeFirst() : times[0] }
}
