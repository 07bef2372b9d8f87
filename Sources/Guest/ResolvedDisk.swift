/// A VM drive resolved to something QEMU can open: the config key
/// (`scsi0`), the file or block device path, and the image format. The
/// storage layer resolves volume ids; the Guest module only takes the result.
public struct ResolvedDisk: Sendable, Equatable {
    public var key: String
    public var path: String
    /// `raw` or `qcow2`.
    public var format: String

    public init(key: String, path: String, format: String = "raw") {
        self.key = key
        self.path = path
        self.format = format
    }
}
