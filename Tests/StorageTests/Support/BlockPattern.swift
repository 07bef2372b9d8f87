import Foundation

/// Self-describing 4 KiB blocks for the snapshot tests.
///
/// A *stamped* block names its volume (tag), its block index and the writer
/// generation that wrote it; the rest of the block is derived from those three,
/// so a torn or misplaced block is detected. A *fill* block is one byte
/// repeated (what `qemu-io write -P` writes). All zeros is a block never written.
enum BlockPattern {
    static let blockSize = 4096
    static let magic: UInt64 = 0x534E_4150_4455_4D50 // "SNAPDUMP"

    /// What a block should hold, or was found to hold.
    enum State: Equatable, CustomStringConvertible {
        case zero
        case stamp(gen: UInt64)
        case fill(UInt8)
        /// Found only: a block that is none of the above (torn, misplaced, garbage).
        case invalid(String)

        var description: String {
            switch self {
            case .zero: return "zeros"
            case .stamp(let g): return "gen \(g)"
            case .fill(let b): return "fill 0x\(String(b, radix: 16))"
            case .invalid(let why): return "invalid (\(why))"
            }
        }
    }

    private static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Writes the stamp of (tag, block, gen) into `buf` (exactly one block).
    static func stamp(_ buf: UnsafeMutableRawBufferPointer, tag: UInt64, block: Int, gen: UInt64) {
        precondition(buf.count == blockSize)
        let w = buf.baseAddress!.bindMemory(to: UInt64.self, capacity: blockSize / 8)
        w[0] = magic
        w[1] = tag
        w[2] = UInt64(block)
        w[3] = gen
        let seed = mix(tag ^ mix(UInt64(block) ^ mix(gen)))
        for i in 4..<(blockSize / 8) { w[i] = mix(seed &+ UInt64(i)) }
    }

    /// Fills `buf` (one block) with what `state` means for block `block` of volume `tag`.
    static func render(_ state: State, into buf: UnsafeMutableRawBufferPointer, tag: UInt64, block: Int) {
        switch state {
        case .zero: buf.initializeMemory(as: UInt8.self, repeating: 0)
        case .fill(let b): buf.initializeMemory(as: UInt8.self, repeating: b)
        case .stamp(let g): stamp(buf, tag: tag, block: block, gen: g)
        case .invalid: preconditionFailure("cannot render an invalid block")
        }
    }

    /// Decodes one block read from volume `tag` at `block`.
    static func decode(_ buf: UnsafeRawBufferPointer, tag: UInt64, block: Int) -> State {
        precondition(buf.count == blockSize)
        let w = buf.baseAddress!.assumingMemoryBound(to: UInt64.self)
        if w[0] == magic {
            guard w[1] == tag else { return .invalid("stamp of volume tag \(w[1]), expected \(tag)") }
            guard w[2] == UInt64(block) else { return .invalid("stamp of block \(w[2]) found at block \(block)") }
            let gen = w[3]
            let seed = mix(tag ^ mix(UInt64(block) ^ mix(gen)))
            for i in 4..<(blockSize / 8) where w[i] != mix(seed &+ UInt64(i)) {
                return .invalid("gen \(gen) stamp torn at byte \(i * 8)")
            }
            return .stamp(gen: gen)
        }
        let first = buf[0]
        var allSame = true
        for i in 0..<(blockSize / 8) where w[i] != w[0] { allSame = false; break }
        if allSame && w[0] == UInt64(first) &* 0x0101_0101_0101_0101 {
            return first == 0 ? .zero : .fill(first)
        }
        return .invalid("unrecognised content")
    }
}

/// A small deterministic random generator (SplitMix64), so a failing run can be repeated.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
