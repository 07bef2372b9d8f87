import Foundation
import SnapdumpSystem

/// Writes the raw content of a volume: restore, and tests that play a guest.
/// Files and block devices are written with pwrite; RBD images through librbd.
public protocol VolumeWriter: AnyObject, Sendable {
    var name: String { get }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Everything written is on stable storage when this returns.
    func sync() throws
    func close() throws
}

/// A raw file or block device.
public final class FileVolumeWriter: VolumeWriter, @unchecked Sendable {
    // @unchecked: `file` is immutable; pwrite and fsync are thread-safe.
    public let name: String
    public let file: File

    /// `flags` adds to O_WRONLY (O_DIRECT for a writer that plays a guest with cache=none).
    public init(path: String, name: String, flags: Int32 = 0) throws {
        file = try File.open(path, O_WRONLY | flags)
        self.name = name
    }

    public init(file: File, name: String) {
        self.file = file
        self.name = name
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try file.write(buffer, at: offset)
    }

    public func sync() throws { try file.sync() }
    public func close() throws { try file.close() }
}
