import Foundation
import SnapdumpSystem

/// `vma extract`: writes each device of an archive as a sparse raw file
/// `<targetdir>/disk-<devname>.raw` and each config blob as a file named
/// after it, checking every format rule and the `snapdump.json` digests on
/// the way. The target directory must not exist; on any failure everything
/// written is removed again, so a bad archive leaves nothing behind.
public enum VMAExtractor {
    public struct Result: Sendable {
        public struct Device: Sendable {
            public var device: VMADevice
            public var path: String
            public var digest: SHA256Digest
        }
        public var devices: [Device]
        /// Paths of the config files written.
        public var configs: [String]
        /// Bytes written (zero blocks are holes and not counted).
        public var bytesWritten: UInt64
        /// Whether `snapdump.json` was present and every digest matched.
        public var metadataChecked: Bool
    }

    /// The file a device is extracted to: `disk-drive-scsi0.raw`.
    public static func deviceFileName(_ device: VMADevice) -> String { "disk-\(device.name).raw" }

    /// `progress` receives qmrestore's progress lines (`ReadProgress`).
    public static func extract(archive: String, to targetDir: String, progress: ((String) -> Void)? = nil) throws -> Result {
        if FileSystem.exists(targetDir) {
            throw ArchiveError(.invalidArgument, path: targetDir, "target directory already exists: refusing to overwrite it")
        }
        let reader = try VMAReader(path: archive)
        for name in reader.header.configs.map(\.name) + reader.header.devices.map(\.name) where !isSafeFileName(name) {
            throw ArchiveError(.format, path: archive, "unsafe name '\(name)' in the archive header")
        }
        do {
            try FileSystem.createDirectory(targetDir)
        } catch {
            throw ArchiveError(.io, path: targetDir, "unable to create target directory", cause: error as? SystemError)
        }

        var created: [String] = []
        var files: [UInt8: File] = [:]
        var done = false
        defer {
            if !done {
                for f in files.values { try? f.close() }
                for p in created.reversed() { try? FileSystem.remove(p) }
                try? FileSystem.removeDirectory(targetDir)
            }
        }

        var configPaths: [String] = []
        for blob in reader.header.configs {
            let p = targetDir + "/" + blob.name
            created.append(p)
            try writeNew(p, blob.data)
            configPaths.append(p)
        }
        var devicePaths: [UInt8: String] = [:]
        for d in reader.header.devices {
            let p = targetDir + "/" + deviceFileName(d)
            do {
                // Readable too: chunks too far out of order are hashed from it afterwards.
                let f = try File.createNew(p, readable: true)
                created.append(p)
                files[d.id] = f
                try f.truncate(to: d.size)
            } catch {
                throw ArchiveError(.io, path: p, "cannot create device file", cause: error as? SystemError)
            }
            devicePaths[d.id] = p
        }

        let total = reader.header.devices.reduce(UInt64(0)) { $0 + $1.size }
        // Written by the digest workers, chunk by chunk, past the page cache where the filesystem allows;
        // zero blocks and zero clusters stay holes of the fresh file.
        let writers = files.mapValues { DirectFile(file: $0) }
        let verification = try reader.verify(targets: files, writers: writers,
                                             progress: progress.map { ReadProgress(total: total, emit: $0) }) { _ in } zeroRuns: { _ in }
        let bytes = verification.bytesWritten
        for (id, f) in files {
            do {
                try writers[id]?.closeDirect()
                try f.sync()
                try f.close()
            } catch {
                throw ArchiveError(.io, path: devicePaths[id] ?? targetDir, "cannot write device file", cause: error as? SystemError)
            }
        }
        files = [:]
        try? FileSystem.syncDirectory(targetDir)
        done = true
        return Result(
            devices: reader.header.devices.map { Result.Device(device: $0, path: devicePaths[$0.id]!, digest: verification.digests[$0.id]!) },
            configs: configPaths, bytesWritten: bytes, metadataChecked: verification.metadataChecked)
    }

    private static func writeNew(_ path: String, _ bytes: [UInt8]) throws(ArchiveError) {
        do {
            let f = try File.createNew(path)
            try f.writeAll(bytes)
            try f.sync()
            try f.close()
        } catch {
            throw ArchiveError(.io, path: path, "cannot write config file", cause: error as? SystemError)
        }
    }

    /// A single path component: no `/`, not empty, `.` or `..`.
    static func isSafeFileName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0")
    }
}
