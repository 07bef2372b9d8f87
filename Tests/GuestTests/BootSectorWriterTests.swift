#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import SnapdumpConfig
import SnapdumpSystem
import TestSupport
@testable import Guest

/// What the writer leaves on a disk after writing sequences 1…`last` (the checker's reference).
func writerRegion(_ layout: BootSectorWriter.Layout, upTo last: UInt32) -> [UInt8] {
    var region = [UInt8](repeating: 0, count: layout.regionBytes)
    func put(_ v: UInt32, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { region.replaceSubrange(at..<(at + 4), with: $0) } }
    let spr = Int(layout.sectorsPerRecord)
    guard last > 0 else { return region }
    for seq in 1...last {
        let slot = Int(seq % layout.records)
        for j in 0..<spr {
            let at = (slot * spr + j) * 512
            region.replaceSubrange(at..<(at + 8), with: BootSectorWriter.magic)
            put(layout.firstSector + UInt32(slot * spr + j), at + 8)
            put(seq, at + 12)
            put(seq, at + 508)
        }
    }
    return region
}

@Suite("Boot sector writer: image and checker")
struct BootSectorWriterUnitTests {
    let layout = BootSectorWriter.Layout(firstSector: 2048, records: 16, sectorsPerRecord: 4)

    @Test func imageIsABootSectorWithItsParameters() throws {
        let s = try BootSectorWriter.image(layout, limit: 1000, ticksBetweenWrites: 3, progressEvery: 32)
        #expect(s.count == 512 && s[510] == 0x55 && s[511] == 0xAA)
        #expect(BootSectorWriter.code.count <= 0x180, "the program runs into its parameters")
        // The strings sit where the code's `mov si, …` point.
        #expect(Array(s[0xEF..<0xFC]) == Array("WRITER START\n".utf8))
        #expect(Array(s[0x116..<0x123]) == Array("WRITER ERROR ".utf8))
        func u32(_ at: Int) -> UInt32 { s[at..<(at + 4)].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) } }
        #expect(s[0x180] == 16 && s[0x182] == 4 && s[0x185] == 0x80)      // DAP: size, count, buffer 0000:8000
        #expect(u32(0x190) == 2048 && u32(0x194) == 16 && u32(0x198) == 1000 && u32(0x19C) == 1)
        #expect(s[0x1A0] == 3 && s[0x1A2] == 31)
        #expect(throws: BootSectorWriter.CheckError.self) { try BootSectorWriter.image(.init(firstSector: 0)) }
        #expect(throws: BootSectorWriter.CheckError.self) { try BootSectorWriter.image(layout, progressEvery: 12) }
        #expect(throws: BootSectorWriter.CheckError.self) { try BootSectorWriter.image(.init(sectorsPerRecord: 65)) }
    }

    @Test func everyPrefixChecksAndReportsItsLastSequence() throws {
        for last: UInt32 in [0, 1, 15, 16, 17, 40, 48] {
            let r = try BootSectorWriter.check(region: writerRegion(layout, upTo: last), layout, name: "d")
            #expect(r.lastSequence == last && r.writtenRecords == min(Int(last), 16), "\(last): \(r)")
        }
    }

    @Test func tornMissingAndMisplacedRecordsAreNamed() throws {
        func expectFailure(_ region: [UInt8], _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try BootSectorWriter.check(region: region, layout, name: "disk.raw")
                Issue.record("accepted: \(words)", sourceLocation: sourceLocation)
            } catch {
                let text = "\(error)"
                #expect(words.allSatisfy { text.contains($0) } && text.hasPrefix("disk.raw: "), "\(text)", sourceLocation: sourceLocation)
            }
        }
        let good = writerRegion(layout, upTo: 40)      // slots 9…15 hold 25…31, slots 0…8 hold 32…40
        // A sector of slot 3's record from the next write (seq 35 → 51): torn record.
        var torn = good
        torn[(3 * 4 + 2) * 512 + 12] = 51; torn[(3 * 4 + 2) * 512 + 508] = 51
        expectFailure(torn, ["torn record in slot 3", "sector 2062", "51"])
        // The end of one sector from another write: torn sector.
        var tornSector = good
        tornSector[(5 * 4) * 512 + 508] = 99
        expectFailure(tornSector, ["torn sector 2068"])
        // Slot 12 still holds the round before (seq 12 instead of 28): a lost write.
        let older = writerRegion(layout, upTo: 12)
        var missing = good
        missing.replaceSubrange((12 * 4 * 512)..<(13 * 4 * 512), with: older[(12 * 4 * 512)..<(13 * 4 * 512)])
        expectFailure(missing, ["slot 12 (sector 2096) holds sequence 12, expected sequence 28", "a write is missing"])
        // A record written to the wrong place.
        var moved = good
        moved.replaceSubrange(0..<(4 * 512), with: good[(4 * 512)..<(8 * 512)])
        expectFailure(moved, ["sector 2048 holds the record of sector 2052"])
        // Half a record: the rest of it never written.
        var half = writerRegion(layout, upTo: 10)
        for i in ((10 * 4 + 2) * 512)..<((10 * 4 + 4) * 512) { half[i] = 0 }
        expectFailure(half, ["torn record in slot 10"])
    }

    @Test func consoleProgressIsParsed() {
        #expect(BootSectorWriter.reportedSequence(console: "WRITER START\nWRITER SEQ 00000010\nWRITER SEQ 0000002F\n") == 0x2F)
        #expect(BootSectorWriter.reportedSequence(console: "WRITER START\r\nWRITER DONE 0000012C\r\n") == 300)
        #expect(BootSectorWriter.reportedSequence(console: "WRITER START\n") == nil)
        #expect(BootSectorWriter.reportedSequence(console: "WRITER SEQ 00000008\nWRITER DONE 0000") == 8)
    }

    /// A line still being written is not a line yet (CI once read
    /// "WRITER DONE 0000" of "WRITER DONE 00000010").
    @Test func consoleWaitSeesOnlyCompleteLines() {
        #expect(Console.completeLines("WRITER START\nWRITER DONE 0000").map(String.init) == ["WRITER START"])
        #expect(Console.completeLines("WRITER START\r\nWRITER DONE 00000010\r\n").map(String.init) == ["WRITER START", "WRITER DONE 00000010"])
        #expect(Console.completeLines("WRITER DO").isEmpty)
        #expect(Heartbeats.parse("HB 1\r\nHB 2\nHB 3") == [1, 2])
    }
}

/// The writer boots in a real QEMU (SeaBIOS, TCG) from a raw file through
/// snapdump's own lifecycle, on each bus SeaBIOS's int 13h serves.
@Suite("Boot sector writer in QEMU", .enabled(if: QEMU.enabled), .serialized)
struct BootSectorWriterQEMUTests {
    let layout = BootSectorWriter.Layout(firstSector: 2048, records: 64, sectorsPerRecord: 8)

    func fixture(_ label: String, bus: String) throws -> (VMFixture, String) {
        let f = try VMFixture(label, vmid: 130) { c in
            c.memory = 32
            c.setDisk(VMDisk(key: bus, volid: "local:130/vm-130-disk-0.raw", options: try PropertyString.parse("size=4M", what: bus)))
        }
        return (f, f.dir + "/vm-130-disk-0.raw")
    }

    func writeImage(_ path: String, _ sector: [UInt8]) throws {
        let img = try File.open(path, O_WRONLY | O_CREAT, mode: 0o644)
        try img.writeAll(sector)
        try img.truncate(to: 4 << 20)
        try img.close()
    }

    @Test(arguments: ["scsi0", "virtio0", "ide0"])
    func bootsFromItsDiskAndWritesEveryRecordUpToItsLimit(bus: String) async throws {
        try QEMU.require()
        let (f, disk) = try fixture("bsw-\(bus)", bus: bus)
        try await f.run { f in
            try writeImage(disk, try BootSectorWriter.image(layout, limit: 300, progressEvery: 64))
            let t0 = ContinuousClock.now
            _ = try await f.lifecycle.start(vmid: 130, disks: [ResolvedDisk(key: bus, path: disk, format: "raw")])
            let console = f.paths.consoleLog(130)
            _ = try await Console.waitForLine(console, "WRITER START", timeout: .seconds(60))
            let done = try await Console.waitForLine(console, "WRITER DONE", timeout: .seconds(120))
            print("[boot sector writer] \(bus): 300 records in \(ContinuousClock.now - t0) from start")
            #expect(done == "WRITER DONE 0000012C")
            let text = try FileSystem.readText(console)
            #expect(!text.contains("WRITER ERROR"), "\(text)")
            #expect(BootSectorWriter.reportedSequence(console: text) == 300)
            try await f.lifecycle.stop(vmid: 130)
            let r = try BootSectorWriter.check(path: disk, layout)
            #expect(r.lastSequence == 300 && r.writtenRecords == 64, "\(r)")
        }
    }

    /// Forever mode, paced by the timer: a copy taken while the guest is paused
    /// holds a consistent prefix at least as far as its console reported; after
    /// resuming it writes on; the disk after a hard stop is a consistent prefix too.
    @Test func pausedCopyAndHardStopHoldAPrefix() async throws {
        try QEMU.require()
        let (f, disk) = try fixture("bsw-pause", bus: "scsi0")
        try await f.run { f in
            try writeImage(disk, try BootSectorWriter.image(layout, ticksBetweenWrites: 1, progressEvery: 8))
            _ = try await f.lifecycle.start(vmid: 130, disks: [ResolvedDisk(key: "scsi0", path: disk, format: "raw")])
            let console = f.paths.consoleLog(130)
            _ = try await Console.waitForLine(console, "WRITER SEQ 00000050", timeout: .seconds(120))   // past one round of 64
            try await f.lifecycle.suspend(vmid: 130)
            let reported = try #require(BootSectorWriter.reportedSequence(console: try FileSystem.readText(console)))
            let copy = f.dir + "/paused.raw"
            try FileManager.default.copyItem(atPath: disk, toPath: copy)
            let paused = try BootSectorWriter.check(path: copy, layout)
            #expect(paused.lastSequence >= reported && paused.lastSequence <= reported + 8, "paused at \(paused), console said \(reported)")
            try await f.lifecycle.resume(vmid: 130)
            _ = try await Console.waitForLine(console, "WRITER SEQ " + String(format: "%08X", (paused.lastSequence / 8 + 4) * 8), timeout: .seconds(60))
            try await f.lifecycle.stop(vmid: 130)
            let end = try BootSectorWriter.check(path: disk, layout)
            let last = try #require(BootSectorWriter.reportedSequence(console: try FileSystem.readText(console)))
            #expect(end.lastSequence >= last && end.lastSequence > paused.lastSequence + 24 && end.writtenRecords == 64, "\(end), console \(last)")
        }
    }
}
