import Foundation
import Testing
@testable import Backup

@Suite("Notes template")
struct NotesTemplateTests {
    let vars = NotesTemplate.Variables(vmid: 100, guestName: "web01", node: "pve1", cluster: "")

    @Test func rendersVariablesAndEscapes() throws {
        #expect(try NotesTemplate.render("{{guestname}} ({{vmid}}) on {{node}}", vars) == "web01 (100) on pve1")
        #expect(try NotesTemplate.render("line1\\nline2 \\\\ end", vars) == "line1\nline2 \\ end")
        #expect(try NotesTemplate.render("cluster: '{{cluster}}'", vars) == "cluster: ''")
        #expect(try NotesTemplate.render("{{vmid}}{{vmid}}", vars) == "100100")
        #expect(try NotesTemplate.render("no variables {single} {{ guestname }}", vars) == "no variables {single} {{ guestname }}")
        #expect(try NotesTemplate.render("trailing \\", vars) == "trailing \\")
    }

    @Test func guestWithoutNameIsVMvmid() throws {
        #expect(try NotesTemplate.render("{{guestname}}", .init(vmid: 7, guestName: nil, node: "n")) == "VM 7")
    }

    @Test func unknownVariableOrEscapeIsAnError() {
        #expect(throws: BackupError.self) { try NotesTemplate.render("{{hostname}}", vars) }
        #expect(throws: BackupError.self) { try NotesTemplate.render("tab\\t", vars) }
    }

    @Test func nodeNameIsTheShortHostName() {
        let n = NotesTemplate.nodeName()
        #expect(!n.isEmpty && !n.contains("."))
    }
}

@Suite("Engine lifecycle hooks: remove-0 check, notes, protection, prune")
struct BackupLifecycleTests {
    func settings(_ conf: String) throws -> BackupSettings {
        try BackupDefaults.merge(commandLine: VzdumpValues(), file: try VzdumpValues.parse(conf, file: "vzdump.conf")) { _ in nil }.settings
    }

    @Test func checkBeforeBackupRefusesAFullRetentionWithRemove0() throws {
        let s = try ScratchDir("check")
        try s.write("vzdump-qemu-100-2021_01_01-10_00_00.vma.zst")
        try s.write("vzdump-qemu-100-2021_01_02-10_00_00.vma.zst")
        let full = try settings("prune-backups: keep-last=2\nremove: 0\n")
        #expect(throws: BackupError.self) { try BackupLifecycle.checkBeforeBackup(vmid: 100, dumpdir: s.path, storage: nil, settings: full) }
        try BackupLifecycle.checkBeforeBackup(vmid: 100, dumpdir: s.path, storage: nil, settings: try settings("prune-backups: keep-last=3\nremove: 0\n"))
        try BackupLifecycle.checkBeforeBackup(vmid: 100, dumpdir: s.path, storage: nil, settings: try settings("prune-backups: keep-last=2\n"))
        try BackupLifecycle.checkBeforeBackup(vmid: 100, dumpdir: s.path, storage: nil,
                                              settings: try settings("prune-backups: keep-last=2\nremove: 0\nprotected: 1\n"))
    }

    @Test func afterCommitWritesNotesProtectsAndPrunesThisGuestOnly() throws {
        let s = try ScratchDir("after")
        for d in daily("2021_01_01", "2021_01_04", at: "10_00_00") {
            try s.write("vzdump-qemu-100-\(d).vma.zst")
            try s.write("vzdump-qemu-100-\(d).log")
            try s.write("vzdump-qemu-101-\(d).vma.zst")
        }
        let newest = s.file("vzdump-qemu-100-2021_01_05-10_00_00.vma.zst")
        try s.write("vzdump-qemu-100-2021_01_05-10_00_00.vma.zst")
        let log = TaskLog(echo: false)
        let st = try settings("prune-backups: keep-last=2\nnotes-template: {{guestname}} {{vmid}}\\nnode {{node}}\nprotected: 1\n")
        try BackupLifecycle.afterCommit(archivePath: newest, vmid: 100, guestName: "db", storage: "local", settings: st, log: log,
                                        node: "host1", timeZone: utc)

        #expect(try String(contentsOfFile: newest + ".notes", encoding: .utf8) == "db 100\nnode host1")
        #expect(s.exists("vzdump-qemu-100-2021_01_05-10_00_00.vma.zst.protected"))
        // The new backup is protected, so it holds no keep-last slot: 04 and 03 are kept.
        let left = try FileManager.default.contentsOfDirectory(atPath: s.path)
        #expect(left.filter { $0.hasPrefix("vzdump-qemu-100-") && $0.hasSuffix(".vma.zst") }.sorted() == [
            "vzdump-qemu-100-2021_01_03-10_00_00.vma.zst", "vzdump-qemu-100-2021_01_04-10_00_00.vma.zst",
            "vzdump-qemu-100-2021_01_05-10_00_00.vma.zst",
        ])
        #expect(!left.contains("vzdump-qemu-100-2021_01_01-10_00_00.log"))
        #expect(left.filter { $0.hasPrefix("vzdump-qemu-101-") }.count == 4)
        #expect(log.lines == [
            "INFO: adding notes to backup",
            "INFO: marking backup as protected",
            "INFO: prune older backups with retention: keep-last=2",
            "INFO: removing backup 'local:backup/vzdump-qemu-100-2021_01_02-10_00_00.vma.zst'",
            "INFO: removing backup 'local:backup/vzdump-qemu-100-2021_01_01-10_00_00.vma.zst'",
            "INFO: pruned 2 backup(s) not covered by keep-retention policy",
        ])
    }

    @Test func badNotesTemplateIsOnlyAWarning() throws {
        let s = try ScratchDir("badnotes")
        let a = try s.write("vzdump-qemu-100-2021_01_05-10_00_00.vma")
        let log = TaskLog(echo: false)
        try BackupLifecycle.afterCommit(archivePath: a, vmid: 100, guestName: nil, storage: nil,
                                        settings: try settings("notes-template: {{unknown}}\n"), log: log)
        #expect(!s.exists("vzdump-qemu-100-2021_01_05-10_00_00.vma.notes"))
        #expect(log.lines.contains { $0.hasPrefix("WARN: unable to add notes - unexpected variable name 'unknown'") })
    }

    @Test func keepAllDoesNotPruneOrLog() throws {
        let s = try ScratchDir("keepall")
        let a = try s.write("vzdump-qemu-100-2021_01_05-10_00_00.vma")
        try s.write("vzdump-qemu-100-2021_01_04-10_00_00.vma")
        let log = TaskLog(echo: false)
        try BackupLifecycle.afterCommit(archivePath: a, vmid: 100, guestName: nil, storage: nil, settings: try settings(""), log: log)
        #expect(log.lines.isEmpty)
        #expect(s.exists("vzdump-qemu-100-2021_01_04-10_00_00.vma"))
    }

    @Test func pruneWithDumpdirLogsPaths() throws {
        let s = try ScratchDir("dumpdirprune")
        let a = try s.write("vzdump-qemu-100-2021_01_05-10_00_00.vma")
        try s.write("vzdump-qemu-100-2021_01_04-10_00_00.vma")
        let log = TaskLog(echo: false)
        try BackupLifecycle.afterCommit(archivePath: a, vmid: 100, guestName: nil, storage: nil,
                                        settings: try settings("prune-backups: keep-last=1\n"), log: log, timeZone: utc)
        #expect(log.lines.contains("INFO: removing backup '\(s.file("vzdump-qemu-100-2021_01_04-10_00_00.vma"))'"))
        #expect(log.lines.last == "INFO: pruned 1 backup(s) not covered by keep-retention policy")
    }
}
