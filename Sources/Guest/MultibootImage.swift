/// A tiny multiboot kernel (the "a.out kludge" header, so no ELF is
/// needed) loaded at 1 MiB: QEMU's `-kernel` runs `code` in 32-bit protected
/// mode without firmware boot delays. The accelerator probe and guests that
/// need no OS (block-level tests inside the storage VM) use it.
/// Header fields as the Multiboot 0.6.96 specification lays them out.
public enum MultibootImage {
    public static func make(code: [UInt8]) -> [UInt8] {
        let base: UInt32 = 0x10_0000
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0000   // bit 16: address fields valid
        let end = base + 32 + UInt32(code.count)
        let header: [UInt32] = [magic, flags, 0 &- (magic &+ flags), base, base, end, end, base + 32]
        var bytes: [UInt8] = []
        for w in header { withUnsafeBytes(of: w.littleEndian) { bytes += $0 } }
        return bytes + code
    }
}
