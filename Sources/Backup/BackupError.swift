/// A backup or restore that cannot go on; names the VMID, volume or archive and the cause.
public struct BackupError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
