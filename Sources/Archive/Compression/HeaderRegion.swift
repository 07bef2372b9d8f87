import CZlib

/// The first, rewritable part of a compressed archive: the VMA header stored
/// *uncompressed* inside a frame (zstd) or member (gzip) of the outer format,
/// so its size depends only on the header's size and `VMAWriter.finish` can
/// pwrite a new header over it. Standard decompressors read it and the
/// following compressed frames/members as one stream.
enum HeaderRegion {
    /// The region for `payload` in `kind`'s container.
    static func wrap(_ payload: [UInt8], _ kind: Compression.Kind) -> [UInt8] {
        switch kind {
        case .none, .lzo: payload
        case .zstd: zstdRawFrame(payload)
        case .gzip: gzipStoredMember(payload)
        }
    }

    /// Largest raw block: the zstd block maximum (RFC 8878 §3.1.1.2.3).
    static let zstdMaxBlock = 128 * 1024

    /// A zstd frame (RFC 8878 §3.1.1): magic, frame header descriptor 0xA0
    /// (4-byte Frame_Content_Size, Single_Segment, no checksum, no dictionary),
    /// content size, then Raw blocks of at most 128 KiB, the last one flagged.
    static func zstdRawFrame(_ payload: [UInt8]) -> [UInt8] {
        precondition(!payload.isEmpty && payload.count <= Int(UInt32.max))
        var out: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xA0]
        let size = UInt32(payload.count)
        out += [UInt8(size & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size >> 16 & 0xFF), UInt8(size >> 24)]
        var pos = 0
        while pos < payload.count {
            let n = min(zstdMaxBlock, payload.count - pos)
            let last: UInt32 = pos + n == payload.count ? 1 : 0
            // Block_Header, 3 bytes little-endian: Last_Block | Block_Type (0 = Raw) << 1 | Block_Size << 3.
            let h = last | 0 << 1 | UInt32(n) << 3
            out += [UInt8(h & 0xFF), UInt8(h >> 8 & 0xFF), UInt8(h >> 16 & 0xFF)]
            out += payload[pos..<pos + n]
            pos += n
        }
        return out
    }

    /// A gzip member (RFC 1952) holding stored deflate blocks (RFC 1951
    /// §3.2.4, BTYPE 00, at most 65535 bytes each), then CRC32 and ISIZE.
    static func gzipStoredMember(_ payload: [UInt8]) -> [UInt8] {
        precondition(!payload.isEmpty)
        // ID1 ID2 CM=8 FLG=0 MTIME=0 XFL=0 OS=3 (Unix).
        var out: [UInt8] = [0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03]
        var pos = 0
        while pos < payload.count {
            let n = min(65535, payload.count - pos)
            let final: UInt8 = pos + n == payload.count ? 1 : 0
            // BFINAL in bit 0, BTYPE 00 in bits 1-2, the rest of the byte is padding.
            out.append(final)
            let len = UInt16(n), nlen = ~UInt16(n)
            out += [UInt8(len & 0xFF), UInt8(len >> 8), UInt8(nlen & 0xFF), UInt8(nlen >> 8)]
            out += payload[pos..<pos + n]
            pos += n
        }
        let crc = payload.withUnsafeBytes { b in
            UInt32(crc32(0, b.baseAddress!.assumingMemoryBound(to: Bytef.self), UInt32(b.count)))
        }
        let isize = UInt32(truncatingIfNeeded: payload.count)
        for v in [crc, isize] {
            out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)]
        }
        return out
    }
}
