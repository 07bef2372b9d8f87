import Foundation

/// A guest with no OS that boots from its own disk and writes to it: a BIOS
/// boot sector (hand-assembled 16-bit x86, listed below) that SeaBIOS loads
/// from the first sector of the boot disk (virtio-scsi, virtio-blk, IDE: its
/// int 13h serves all of them). It prints `WRITER START` on COM1, then writes
/// record after record with int 13h AH=43h (extended write) into a region of
/// the disk — a record is `sectorsPerRecord` sectors, each holding the magic
/// `SNAPDREC`, its own LBA and the record's sequence number (at the start and
/// again at the end of the sector) — sequence 1, 2, 3 … into slot
/// `seq mod records`, round and round. One write at a time, each finished
/// before the next starts, so the disk at any instant (a snapshot, a mirror's
/// switch-over, the disk after a hard stop) holds exactly the records up to
/// some sequence N: `check` verifies that and returns N. Every
/// `progressEvery`-th sequence it prints `WRITER SEQ <hex>`; at `limit` it
/// prints `WRITER DONE <hex>` and halts; a failed write prints `WRITER ERROR
/// <hex eax>` (AH = the BIOS status) and halts. Between writes it sleeps
/// `ticksBetweenWrites` timer ticks (18.2 Hz) with `hlt`, so a writing guest
/// costs a nested TCG host little CPU.
///
/// Self-contained on purpose (Foundation only): other storages' guest tests
/// reuse it as it is.
public enum BootSectorWriter {
    public struct Layout: Sendable, Equatable {
        /// The region's first sector (512 bytes); sector 0 is the boot sector.
        public var firstSector: UInt32
        public var records: UInt32
        public var sectorsPerRecord: UInt16

        public init(firstSector: UInt32 = 2048, records: UInt32 = 256, sectorsPerRecord: UInt16 = 8) {
            self.firstSector = firstSector
            self.records = records
            self.sectorsPerRecord = sectorsPerRecord
        }

        public var regionBytes: Int { Int(records) * Int(sectorsPerRecord) * 512 }
        /// The byte just past the region: the disk must be at least this large.
        public var endOffset: Int { Int(firstSector) * 512 + regionBytes }
    }

    public static let magic = Array("SNAPDREC".utf8)

    /// Where the program keeps its parameters (offsets in the sector; it
    /// addresses them as 0x7C00 + offset).
    enum Offset {
        static let dap = 0x180          // Disk Address Packet: size 16, count, buffer 0000:8000, LBA
        static let firstSector = 0x190
        static let records = 0x194
        static let limit = 0x198
        static let sequence = 0x19C     // the next sequence to write, starts at 1
        static let ticks = 0x1A0
        static let progressMask = 0x1A2
    }

    /// The 512-byte boot sector. `limit` 0: write forever. `progressEvery`: a power of two.
    public static func image(_ layout: Layout, limit: UInt32 = 0, ticksBetweenWrites: UInt16 = 0,
                             progressEvery: UInt16 = 16) throws -> [UInt8] {
        guard layout.firstSector >= 1 else { throw CheckError("boot sector writer: the region must start after sector 0 (the boot sector)") }
        guard layout.records >= 1 else { throw CheckError("boot sector writer: the region needs at least one record") }
        // The buffer at 0000:8000 ends below 64 KiB, so a record is at most 64 sectors.
        guard (1...64).contains(layout.sectorsPerRecord) else {
            throw CheckError("boot sector writer: \(layout.sectorsPerRecord) sectors per record (1 to 64)")
        }
        guard progressEvery > 0, progressEvery & (progressEvery - 1) == 0 else {
            throw CheckError("boot sector writer: progressEvery \(progressEvery) is not a power of two")
        }
        guard UInt64(layout.firstSector) + UInt64(layout.records) * UInt64(layout.sectorsPerRecord) <= UInt64(UInt32.max) else {
            throw CheckError("boot sector writer: the region ends beyond sector 2^32")
        }
        var sector = [UInt8](repeating: 0, count: 512)
        sector.replaceSubrange(0..<code.count, with: code)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { sector.replaceSubrange(offset..<(offset + $0.count), with: $0) }
        }
        put(UInt16(16), at: Offset.dap)
        put(layout.sectorsPerRecord, at: Offset.dap + 2)
        put(UInt16(0x8000), at: Offset.dap + 4)
        put(UInt16(0), at: Offset.dap + 6)
        put(layout.firstSector, at: Offset.firstSector)
        put(layout.records, at: Offset.records)
        put(limit, at: Offset.limit)
        put(UInt32(1), at: Offset.sequence)
        put(ticksBetweenWrites, at: Offset.ticks)
        put(progressEvery - 1, at: Offset.progressMask)
        sector[510] = 0x55
        sector[511] = 0xAA
        return sector
    }

    /// The program, assembled by hand (checked against GNU as and objdump);
    /// each line: bytes, address, instruction, why. Its strings follow at 0x7CEF.
    static let code: [UInt8] = [
            0xFA,                                       // 7c00  cli  ; interrupts off while the segments are set
            0x31, 0xC0,                                 // 7c01  xor ax,ax  ; DS = ES = SS = 0: every address is absolute (0x7C00 + offset)
            0x8E, 0xD8,                                 // 7c03  mov ds,ax  ; DS = 0
            0x8E, 0xC0,                                 // 7c05  mov es,ax  ; ES = 0
            0x8E, 0xD0,                                 // 7c07  mov ss,ax  ; SS = 0
            0xBC, 0x00, 0x7C,                           // 7c09  mov sp,0x7c00  ; stack grows down from below the boot sector
            0xFB,                                       // 7c0c  sti  ; interrupts on again (the timer wakes the wait loop)
            0xFC,                                       // 7c0d  cld  ; lodsb counts up
            0x88, 0x16, 0xA4, 0x7D,                     // 7c0e  mov BYTE PTR ds:0x7da4,dl  ; drive = DL, the BIOS drive SeaBIOS booted from
            0xBE, 0xEF, 0x7C,                           // 7c12  mov si,0x7cef  ; si = "WRITER START\n"
            0xE8, 0x9F, 0x00,                           // 7c15  call 0x7cb7  ; print the string at si
            0x66, 0xA1, 0x9C, 0x7D,                     // 7c18  mov eax,ds:0x7d9c  ; next: eax = seq
            0x66, 0x31, 0xD2,                           // 7c1c  xor edx,edx  ; edx:eax = seq
            0x66, 0xF7, 0x36, 0x94, 0x7D,               // 7c1f  div DWORD PTR ds:0x7d94  ; edx = seq mod records: the slot
            0x66, 0x89, 0xD0,                           // 7c24  mov eax,edx  ; eax = slot
            0x66, 0x0F, 0xB7, 0x0E, 0x82, 0x7D,         // 7c27  movzx ecx,WORD PTR ds:0x7d82  ; ecx = sectors per record (the DAP's count)
            0x66, 0xF7, 0xE1,                           // 7c2d  mul ecx  ; eax = slot * sectors per record (edx clobbered)
            0x66, 0x03, 0x06, 0x90, 0x7D,               // 7c30  add eax,DWORD PTR ds:0x7d90  ; eax += first sector: the record's LBA
            0x66, 0xA3, 0x88, 0x7D,                     // 7c35  mov ds:0x7d88,eax  ; the DAP's LBA (low dword; the high one stays 0)
            0x66, 0x8B, 0x1E, 0x9C, 0x7D,               // 7c39  mov ebx,DWORD PTR ds:0x7d9c  ; ebx = seq
            0xBF, 0x00, 0x80,                           // 7c3e  mov di,0x8000  ; di = the buffer at 0000:8000
            0x66, 0xC7, 0x05, 0x53, 0x4E, 0x41, 0x50,   // 7c41  mov DWORD PTR [di],0x50414e53  ; fill: "SNAP"
            0x66, 0xC7, 0x45, 0x04, 0x44, 0x52, 0x45, 0x43, // 7c48  mov DWORD PTR [di+0x4],0x43455244  ; "DREC": the magic "SNAPDREC" at +0
            0x66, 0x89, 0x45, 0x08,                     // 7c50  mov DWORD PTR [di+0x8],eax  ; the sector's own LBA at +8
            0x66, 0x89, 0x5D, 0x0C,                     // 7c54  mov DWORD PTR [di+0xc],ebx  ; seq at +12
            0x66, 0x89, 0x9D, 0xFC, 0x01,               // 7c58  mov DWORD PTR [di+0x1fc],ebx  ; seq again at +508: a sector torn in two disagrees with itself
            0x66, 0x40,                                 // 7c5d  inc eax  ; the next sector's LBA
            0x81, 0xC7, 0x00, 0x02,                     // 7c5f  add di,0x200  ; the next sector of the buffer
            0xE2, 0xDC,                                 // 7c63  loop 0x7c41  ; loop fill (cx = sectors per record)
            0xB8, 0x00, 0x43,                           // 7c65  mov ax,0x4300  ; AH=43h extended write, AL=0 (no verify)
            0x8A, 0x16, 0xA4, 0x7D,                     // 7c68  mov dl,BYTE PTR ds:0x7da4  ; dl = drive
            0xBE, 0x80, 0x7D,                           // 7c6c  mov si,0x7d80  ; ds:si = the Disk Address Packet
            0xCD, 0x13,                                 // 7c6f  int 0x13  ; BIOS disk services
            0x72, 0x39,                                 // 7c71  jb 0x7cac  ; carry set: failed, to fail
            0x66, 0xA1, 0x9C, 0x7D,                     // 7c73  mov eax,ds:0x7d9c  ; eax = seq, now written
            0x85, 0x06, 0xA2, 0x7D,                     // 7c77  test WORD PTR ds:0x7da2,ax  ; seq & progress mask
            0x75, 0x09,                                 // 7c7b  jne 0x7c86  ; not zero: no progress line, to noprint
            0xBE, 0xFD, 0x7C,                           // 7c7d  mov si,0x7cfd  ; si = "WRITER SEQ "
            0xE8, 0x34, 0x00,                           // 7c80  call 0x7cb7  ; print the string at si
            0xE8, 0x45, 0x00,                           // 7c83  call 0x7ccb  ; puthex eax, newline
            0x66, 0x3B, 0x06, 0x98, 0x7D,               // 7c86  cmp eax,DWORD PTR ds:0x7d98  ; noprint: seq == limit?
            0x74, 0x12,                                 // 7c8b  je 0x7c9f  ; yes: to done
            0x66, 0xFF, 0x06, 0x9C, 0x7D,               // 7c8d  inc DWORD PTR ds:0x7d9c  ; seq += 1
            0x8B, 0x0E, 0xA0, 0x7D,                     // 7c92  mov cx,WORD PTR ds:0x7da0  ; cx = timer ticks to wait
            0xE3, 0x80,                                 // 7c96  jcxz 0x7c18  ; none: to next
            0xFB,                                       // 7c98  sti  ; wait: interrupts on
            0xF4,                                       // 7c99  hlt  ; sleep until the next interrupt (timer IRQ0, 18.2 Hz): no host CPU
            0xE2, 0xFC,                                 // 7c9a  loop 0x7c98  ; loop wait
            0xE9, 0x79, 0xFF,                           // 7c9c  jmp 0x7c18  ; to next
            0xBE, 0x09, 0x7D,                           // 7c9f  mov si,0x7d09  ; done: si = "WRITER DONE "
            0xE8, 0x12, 0x00,                           // 7ca2  call 0x7cb7  ; print the string at si
            0xE8, 0x23, 0x00,                           // 7ca5  call 0x7ccb  ; puthex eax (the last seq)
            0xFA,                                       // 7ca8  cli  ; halt: interrupts off
            0xF4,                                       // 7ca9  hlt  ; halt for good (QEMU still reports the guest running)
            0xEB, 0xFC,                                 // 7caa  jmp 0x7ca8  ; to halt (after an NMI)
            0xBE, 0x16, 0x7D,                           // 7cac  mov si,0x7d16  ; fail: si = "WRITER ERROR "
            0xE8, 0x05, 0x00,                           // 7caf  call 0x7cb7  ; print the string at si
            0xE8, 0x16, 0x00,                           // 7cb2  call 0x7ccb  ; puthex eax (AH = the BIOS status)
            0xEB, 0xF1,                                 // 7cb5  jmp 0x7ca8  ; to halt
            0x50,                                       // 7cb7  push ax  ; puts: keep ax (callers print eax next)
            0xAC,                                       // 7cb8  lods al,BYTE PTR ds:[si]  ; al = [si++]
            0x84, 0xC0,                                 // 7cb9  test al,al  ; end of the string?
            0x74, 0x05,                                 // 7cbb  je 0x7cc2  ; yes: to puts_end
            0xE8, 0x04, 0x00,                           // 7cbd  call 0x7cc4  ; print al
            0xEB, 0xF6,                                 // 7cc0  jmp 0x7cb8  ; to puts_next
            0x58,                                       // 7cc2  pop ax  ; ax as the caller had it
            0xC3,                                       // 7cc3  ret  ; return
            0x52,                                       // 7cc4  push dx  ; putc: keep dx
            0xBA, 0xF8, 0x03,                           // 7cc5  mov dx,0x3f8  ; COM1 data port
            0xEE,                                       // 7cc8  out dx,al  ; send al (QEMU's UART is always ready)
            0x5A,                                       // 7cc9  pop dx  ; dx as the caller had it
            0xC3,                                       // 7cca  ret  ; return
            0x66, 0x50,                                 // 7ccb  push eax  ; puthex: keep eax
            0xB9, 0x08, 0x00,                           // 7ccd  mov cx,0x8  ; eight hex digits
            0x66, 0xC1, 0xC0, 0x04,                     // 7cd0  rol eax,0x4  ; hexdigit: the next digit into al's low nibble
            0x66, 0x50,                                 // 7cd4  push eax  ; keep the rotated value
            0x24, 0x0F,                                 // 7cd6  and al,0xf  ; the nibble
            0x04, 0x30,                                 // 7cd8  add al,0x30  ; + "0"
            0x3C, 0x39,                                 // 7cda  cmp al,0x39  ; above "9"?
            0x76, 0x02,                                 // 7cdc  jbe 0x7ce0  ; no: to hexout
            0x04, 0x07,                                 // 7cde  add al,0x7  ; to "A"-"F"
            0xE8, 0xE1, 0xFF,                           // 7ce0  call 0x7cc4  ; hexout: putc
            0x66, 0x58,                                 // 7ce3  pop eax  ; the rotated (or, last, the caller's) eax
            0xE2, 0xE9,                                 // 7ce5  loop 0x7cd0  ; loop hexdigit
            0xB0, 0x0A,                                 // 7ce7  mov al,0xa  ; "\n"
            0xE8, 0xD8, 0xFF,                           // 7ce9  call 0x7cc4  ; print al
            0x66, 0x58,                                 // 7cec  pop eax  ; the rotated (or, last, the caller's) eax
            0xC3,                                       // 7cee  ret  ; return
        ] + Array("WRITER START\n\0".utf8)     // 7cef
          + Array("WRITER SEQ \0".utf8)        // 7cfd
          + Array("WRITER DONE \0".utf8)       // 7d09
          + Array("WRITER ERROR \0".utf8)      // 7d16

    // MARK: - Checking a disk

    public struct CheckError: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    public struct Report: Sendable, Equatable {
        /// N: every record with sequence ≤ N is on the disk (those not yet overwritten), none later.
        public var lastSequence: UInt32
        /// Slots that hold a record.
        public var writtenRecords: Int
    }

    /// Checks the region of the disk image or block device at `path`.
    public static func check(path: String, _ layout: Layout) throws -> Report {
        guard let f = FileHandle(forReadingAtPath: path) else { throw CheckError("\(path): cannot open for reading") }
        defer { try? f.close() }
        try f.seek(toOffset: UInt64(layout.firstSector) * 512)
        var region = Data()
        while region.count < layout.regionBytes, let d = try f.read(upToCount: layout.regionBytes - region.count), !d.isEmpty {
            region += d
        }
        guard region.count == layout.regionBytes else {
            throw CheckError("\(path): the record region (\(layout.endOffset) bytes from the start) is beyond its end")
        }
        return try check(region: [UInt8](region), layout, name: path)
    }

    /// Checks `region` (the bytes from `layout.firstSector` on): every record
    /// well-formed (magic, its own LBA, one sequence in every sector, front and
    /// back), each in its slot, and the records exactly those of sequences up to
    /// the highest one found — none missing, none torn.
    public static func check(region: [UInt8], _ layout: Layout, name: String) throws -> Report {
        let spr = Int(layout.sectorsPerRecord), records = Int(layout.records)
        func u32(_ at: Int) -> UInt32 {
            UInt32(region[at]) | UInt32(region[at + 1]) << 8 | UInt32(region[at + 2]) << 16 | UInt32(region[at + 3]) << 24
        }
        var found = [UInt32](repeating: 0, count: records)     // 0: never written
        for slot in 0..<records {
            var seq: UInt32?
            for j in 0..<spr {
                let at = (slot * spr + j) * 512
                let lba = Int(layout.firstSector) + slot * spr + j
                let hasMagic = Array(region[at..<(at + 8)]) == magic
                if j > 0, (seq == 0) == hasMagic {
                    throw CheckError("\(name): torn record in slot \(slot): sector \(lba - j) \(seq == 0 ? "holds no record" : "holds one"), sector \(lba) \(hasMagic ? "does" : "does not")")
                }
                guard hasMagic else { seq = 0; continue }
                guard Int(u32(at + 8)) == lba else { throw CheckError("\(name): sector \(lba) holds the record of sector \(u32(at + 8))") }
                let front = u32(at + 12), back = u32(at + 508)
                guard front == back else { throw CheckError("\(name): torn sector \(lba): sequence \(front) at its start, \(back) at its end") }
                guard front >= 1, Int(front % layout.records) == slot else {
                    throw CheckError("\(name): sector \(lba) (slot \(slot)) holds sequence \(front), which belongs in slot \(front % layout.records)")
                }
                if let s = seq, s != front {
                    throw CheckError("\(name): torn record in slot \(slot): sector \(lba - j) holds sequence \(s), sector \(lba) \(front)")
                }
                seq = front
            }
            found[slot] = seq ?? 0
        }
        let last = found.max() ?? 0
        for slot in 0..<records {
            // The newest sequence ≤ last that lands in this slot (0: none).
            let back = (Int(last) - slot) % records
            let expected = Int(last) >= slot && Int(last) - back >= 1 ? UInt32(Int(last) - back) : 0
            guard found[slot] == expected else {
                let lba = Int(layout.firstSector) + slot * spr
                throw CheckError("\(name): slot \(slot) (sector \(lba)) holds \(found[slot] == 0 ? "no record" : "sequence \(found[slot])"), expected \(expected == 0 ? "none" : "sequence \(expected)") with records up to \(last) present: a write is missing")
            }
        }
        return Report(lastSequence: last, writtenRecords: found.filter { $0 != 0 }.count)
    }

    /// The highest sequence the writer reported on its console (progress lines and its last line).
    public static func reportedSequence(console: String) -> UInt32? {
        console.split(whereSeparator: \.isNewline).compactMap { line -> UInt32? in
            // Eight digits or nothing: the console's last line may be half-written.
            for prefix in ["WRITER SEQ ", "WRITER DONE "] where line.hasPrefix(prefix) {
                let digits = line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
                return digits.count == 8 ? UInt32(digits, radix: 16) : nil
            }
            return nil
        }.max()
    }
}
