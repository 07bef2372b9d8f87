import Foundation
import SnapdumpSystem
import Testing
import TestSupport
@testable import Backup

/// A scratch directory removed when dropped.
final class ScratchDir {
    let path: String
    init(_ label: String) throws { path = try Integration.scratchDirectory("backup-\(label)") }
    func file(_ name: String) -> String { path + "/" + name }
    /// Creates `name` with `contents`.
    @discardableResult
    func write(_ name: String, _ contents: String = "x") throws -> String {
        try contents.write(toFile: file(name), atomically: false, encoding: .utf8)
        return file(name)
    }
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

@Suite("Dump directory: listing, remove, protect, notes, prune")
struct DumpDirectoryTests {
    @Test func fileNamePattern() {
        #expect(BackupArchive.parseFileName("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst")?.vmid == 100)
        #expect(BackupArchive.parseFileName("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst")?.standard != nil)
        #expect(BackupArchive.parseFileName("vzdump-qemu-100-2021_01_01-10_00_00.vma")?.standard != nil)
        #expect(BackupArchive.parseFileName("vzdump-qemu-100-2021_01_01-10_00_00.vma.gz")?.standard != nil)
        #expect(BackupArchive.parseFileName("vzdump-qemu-100-2021_01_01-10_00_00.vma.lzo")?.standard != nil)
        // Renamed: listed, but not a standard name.
        let renamed = BackupArchive.parseFileName("vzdump-qemu-100-before-upgrade.vma.zst")
        #expect(renamed?.vmid == 100 && renamed?.standard == nil)
        // Not backups at all.
        for n in ["vzdump-qemu-100-2021_01_01-10_00_00.vma.dat", "vzdump-qemu-100-2021_01_01-10_00_00.dat",
                  "vzdump-qemu-100-2021_01_01-10_00_00.log", "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst.notes",
                  "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst.protected", "vzdump-lxc-100-2021_01_01-10_00_00.tar.zst",
                  "vzdump-qemu-abc-2021_01_01-10_00_00.vma", "vzdump-qemu-100-.vma", "backup.vma.zst", "vzdump-qemu-100.vma"] {
            #expect(BackupArchive.parseFileName(n) == nil, "\(n)")
        }
    }

    @Test func listsArchivesWithTimeSizeProtectionAndNotes() throws {
        let s = try ScratchDir("list")
        try s.write("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst", "12345")
        try s.write("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst.notes", "first line\nsecond line\n")
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma.gz", "1")
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma.gz.protected", "")
        try s.write("vzdump-qemu-100-2021_01_03-10_00_00.vma.dat", "partial")
        try s.write("vzdump-qemu-100-2021_01_03-10_00_00.log", "log")
        try s.write("vzdump-qemu-101-2021_01_04-10_00_00.vma", "other guest")
        try s.write("notes.txt", "foreign")
        let dump = DumpDirectory(path: s.path, storage: "local", timeZone: utc)

        let all = try dump.archives()
        #expect(all.map(\.fileName) == ["vzdump-qemu-101-2021_01_04-10_00_00.vma", "vzdump-qemu-100-2021_01_02-10_00_00.vma.gz",
                                        "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst"])
        let mine = try dump.archives(vmid: 100)
        #expect(mine.count == 2)
        let a = mine[1]
        #expect(a.vmid == 100 && a.size == 5 && !a.isProtected)
        #expect(a.date == nameDate("2021_01_01-10_00_00"))
        #expect(a.notesFirstLine == "first line")
        #expect(a.notes == "first line\nsecond line\n")
        #expect(a.volid(storage: "local") == "local:backup/vzdump-qemu-100-2021_01_01-10_00_00.vma.zst")
        #expect(a.logPath == s.file("vzdump-qemu-100-2021_01_01-10_00_00.log"))
        #expect(mine[0].isProtected && mine[0].notes == nil && mine[0].compression == .gzip)
        #expect(try DumpDirectory(path: s.file("missing")).archives().isEmpty)
    }

    @Test func removeTakesLogAndNotesAndRefusesProtected() throws {
        let s = try ScratchDir("remove")
        let name = "vzdump-qemu-100-2021_01_01-10_00_00.vma.zst"
        try s.write(name)
        try s.write("vzdump-qemu-100-2021_01_01-10_00_00.log")
        try s.write(name + ".notes", "n")
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.log") // another backup's log stays
        let dump = DumpDirectory(path: s.path)
        var a = try dump.archive(named: name)

        try dump.setProtected(a, true)
        #expect(s.exists(name + ".protected"))
        try dump.setProtected(a, true) // idempotent
        a = try dump.archive(named: name)
        #expect(a.isProtected)
        #expect(throws: BackupError.self) { try dump.remove(a) }
        #expect(s.exists(name) && s.exists(name + ".notes"))

        try dump.setProtected(a, false)
        #expect(!s.exists(name + ".protected"))
        a = try dump.archive(named: name)
        #expect(try dump.remove(a).isEmpty)
        #expect(!s.exists(name) && !s.exists(name + ".notes") && !s.exists("vzdump-qemu-100-2021_01_01-10_00_00.log"))
        #expect(s.exists("vzdump-qemu-100-2021_01_02-10_00_00.log"))
        #expect(throws: BackupError.self) { try dump.archive(named: name) }
        #expect(throws: BackupError.self) { try dump.archive(named: "not-an-archive.txt") }
    }

    @Test func removeOfARenamedArchiveTakesItsLog() throws {
        let s = try ScratchDir("renamed")
        try s.write("vzdump-qemu-100-manual.vma.zst")
        try s.write("vzdump-qemu-100-manual.log")
        let dump = DumpDirectory(path: s.path)
        try dump.remove(try dump.archive(named: "vzdump-qemu-100-manual.vma.zst"))
        #expect(!s.exists("vzdump-qemu-100-manual.vma.zst") && !s.exists("vzdump-qemu-100-manual.log"))
    }

    @Test func notesSetAndClear() throws {
        let s = try ScratchDir("notes")
        let name = "vzdump-qemu-100-2021_01_01-10_00_00.vma"
        try s.write(name)
        let dump = DumpDirectory(path: s.path)
        try dump.setNotes(try dump.archive(named: name), "Grüße\nzweite Zeile")
        #expect(try String(contentsOfFile: s.file(name + ".notes"), encoding: .utf8) == "Grüße\nzweite Zeile")
        #expect(try dump.archive(named: name).notesFirstLine == "Grüße")
        try dump.setNotes(try dump.archive(named: name), "")
        #expect(!s.exists(name + ".notes"))
    }

    @Test func pruneIsScopedToTheGuestAndNeverTouchesRenamedOrProtected() throws {
        let s = try ScratchDir("prune")
        let days = daily("2021_01_01", "2021_01_05", at: "10_00_00")
        for d in days {
            try s.write("vzdump-qemu-100-\(d).vma.zst")
            try s.write("vzdump-qemu-100-\(d).log")
            try s.write("vzdump-qemu-101-\(d).vma.zst")
        }
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma.zst.protected", "")
        try s.write("vzdump-qemu-100-before-upgrade.vma.zst")
        try s.write("vzdump-qemu-100-2021_01_06-10_00_00.vma.dat") // being written: not a backup
        let dump = DumpDirectory(path: s.path, storage: "local", timeZone: utc)
        let policy = try PrunePolicy(parsing: "keep-last=2")

        let dry = try dump.prune(vmid: 100, policy: policy, dryRun: true)
        let marks = Dictionary(uniqueKeysWithValues: dry.map { ($0.archive.fileName, $0.mark) })
        #expect(marks.count == 6)
        #expect(marks["vzdump-qemu-100-2021_01_05-10_00_00.vma.zst"] == .keep)
        #expect(marks["vzdump-qemu-100-2021_01_04-10_00_00.vma.zst"] == .keep)
        #expect(marks["vzdump-qemu-100-2021_01_03-10_00_00.vma.zst"] == .remove)
        #expect(marks["vzdump-qemu-100-2021_01_02-10_00_00.vma.zst"] == .protected)
        #expect(marks["vzdump-qemu-100-2021_01_01-10_00_00.vma.zst"] == .remove)
        #expect(marks["vzdump-qemu-100-before-upgrade.vma.zst"] == .renamed)
        #expect(s.exists("vzdump-qemu-100-2021_01_03-10_00_00.vma.zst")) // dry run removed nothing

        var logged: [String] = []
        try dump.prune(vmid: 100, policy: policy) { _, m in logged.append(m) }
        #expect(logged == ["removing backup 'local:backup/vzdump-qemu-100-2021_01_03-10_00_00.vma.zst'",
                           "removing backup 'local:backup/vzdump-qemu-100-2021_01_01-10_00_00.vma.zst'"])
        let left = try FileSystem.list(s.path)
        #expect(!left.contains("vzdump-qemu-100-2021_01_03-10_00_00.vma.zst"))
        #expect(!left.contains("vzdump-qemu-100-2021_01_03-10_00_00.log"))
        #expect(left.contains("vzdump-qemu-100-2021_01_02-10_00_00.vma.zst"))
        #expect(left.contains("vzdump-qemu-100-before-upgrade.vma.zst"))
        #expect(left.contains("vzdump-qemu-100-2021_01_06-10_00_00.vma.dat"))
        #expect(left.filter { $0.hasPrefix("vzdump-qemu-101-") }.count == 5) // other guest untouched
    }

    @Test func pruneAllGuestsGroupsByVMID() throws {
        let s = try ScratchDir("prune-all")
        for d in daily("2021_01_01", "2021_01_03", at: "10_00_00") {
            try s.write("vzdump-qemu-100-\(d).vma")
            try s.write("vzdump-qemu-2000-\(d).vma")
        }
        let r = try DumpDirectory(path: s.path, timeZone: utc).prune(vmid: nil, policy: try PrunePolicy(parsing: "keep-last=1"), dryRun: true)
        #expect(r.filter { $0.mark == .keep }.map(\.archive.fileName).sorted()
                == ["vzdump-qemu-100-2021_01_03-10_00_00.vma", "vzdump-qemu-2000-2021_01_03-10_00_00.vma"])
    }

    @Test func backupLimitForRemoveZero() throws {
        let s = try ScratchDir("limit")
        let dump = DumpDirectory(path: s.path)
        let policy = try PrunePolicy(parsing: "keep-last=1,keep-daily=1")  // limit 2
        try s.write("vzdump-qemu-100-2021_01_01-10_00_00.vma")
        try dump.checkBackupLimit(vmid: 100, policy: policy, remove: false, protected: false)
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma")
        do {
            try dump.checkBackupLimit(vmid: 100, policy: policy, remove: false, protected: false)
            Issue.record("backup over the limit was not refused")
        } catch let e as BackupError {
            #expect(e.message.hasPrefix("There is a max backup limit of 2 enforced by the target storage or the vzdump parameters."))
        }
        // remove 1 prunes instead; a protected new backup does not count; other guests do not count.
        try dump.checkBackupLimit(vmid: 100, policy: policy, remove: true, protected: false)
        try dump.checkBackupLimit(vmid: 100, policy: policy, remove: false, protected: true)
        try dump.checkBackupLimit(vmid: 101, policy: policy, remove: false, protected: false)
        try dump.checkBackupLimit(vmid: 100, policy: .keepEverything, remove: false, protected: false)
        // Protected archives do not count against the limit.
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma.protected", "")
        try dump.checkBackupLimit(vmid: 100, policy: policy, remove: false, protected: false)
    }
}
