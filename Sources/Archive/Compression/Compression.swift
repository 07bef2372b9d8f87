/// How the VMA stream is compressed from outside, as vzdump's `compress` option.
public enum Compression: Hashable, Sendable {
    case none
    /// zlib's deflate in a gzip wrapper, level 6 (gzip's default).
    case gzip
    /// libzstd at `level` (zstd's default is 3); `workers` > 0 compresses on
    /// that many threads inside libzstd (`ZSTD_c_nbWorkers`), 0 on the caller's.
    case zstd(level: Int32 = 3, workers: Int32 = 0)
    /// Recognised for names and magic only: writing or reading it fails.
    case lzo

    /// The format without its parameters.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        case none, gzip, zstd, lzo

        /// The archive file extension after `.vma`: "", ".gz", ".zst", ".lzo".
        public var fileExtension: String {
            switch self {
            case .none: ""
            case .gzip: ".gz"
            case .zstd: ".zst"
            case .lzo: ".lzo"
            }
        }

        public init?(fileExtension ext: String) {
            guard let k = Kind.allCases.first(where: { $0.fileExtension == ext }) else { return nil }
            self = k
        }
    }

    public var kind: Kind {
        switch self {
        case .none: .none
        case .gzip: .gzip
        case .zstd: .zstd
        case .lzo: .lzo
        }
    }

    public static let lzoUnsupported = "lzo not supported: no maintained library"

    /// Detects the compression of a stream from its first bytes (at least 4):
    /// zstd `28 B5 2F FD`, gzip `1F 8B`, lzop `89 4C 5A 4F`, raw VMA `VMA\0`.
    public static func detect(_ head: some Collection<UInt8>) -> Kind? {
        let b = Array(head.prefix(4))
        if b.count >= 4 && b == [0x28, 0xB5, 0x2F, 0xFD] { return .zstd }
        if b.count >= 2 && b[0] == 0x1F && b[1] == 0x8B { return .gzip }
        if b.count >= 4 && b == [0x89, 0x4C, 0x5A, 0x4F] { return .lzo }
        if b.count >= 4 && b == VMAFormat.magic { return Kind.none }
        return nil
    }
}
