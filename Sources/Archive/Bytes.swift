// Byte-order helpers and the word-wide zero test used on the hot path.

extension UnsafeMutableRawBufferPointer {
    @inline(__always) func storeBE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
    @inline(__always) func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always) func loadBE<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inline(__always) func loadLE<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

enum ZeroCheck {
    /// Whether `count` bytes at `p` are all zero: 64 bytes per step as eight
    /// word loads OR-ed together, with an early exit per step, then a byte tail.
    @inline(__always)
    static func isZero(_ p: UnsafeRawPointer, count: Int) -> Bool {
        var i = 0
        while i + 64 <= count {
            let a = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self)
            let b = p.loadUnaligned(fromByteOffset: i + 32, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 40, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 48, as: UInt64.self)
                | p.loadUnaligned(fromByteOffset: i + 56, as: UInt64.self)
            if a | b != 0 { return false }
            i += 64
        }
        while i < count {
            if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }

    static func isZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        return isZero(base, count: buffer.count)
    }
}

enum Hex {
    static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        guard u.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}

/// `withUnsafeBytes` keeping a typed error (the stdlib's is `rethrows`,
/// which widens typed throws to `any Error`).
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ArchiveError) -> R) throws(ArchiveError) -> R {
    var result: Result<R, ArchiveError>?
    array.withUnsafeBytes { b in
        result = Result { () throws(ArchiveError) -> R in try body(b) }
    }
    return try result!.get()
}
