// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "snapdump",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "snapdump", targets: ["snapdump"]),
        .executable(name: "snapdumpd", targets: ["snapdumpd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // snapdumpd: service lifecycle (signals, graceful shutdown) and its logging API.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.14.0"),
    ],
    targets: [
        // C helpers for calls Swift cannot make directly (variadic ioctl, a SIGBUS-guarded zstd call, PCLMULQDQ CRC-32).
        .target(name: "CShims", linkerSettings: [.linkedLibrary("zstd"), .linkedLibrary("z")]),
        // System libraries from Debian, linked through module maps.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // libnbd is opened on first use (CNBD's shim), not linked: its dependencies were ~3 ms of every start.
        .systemLibrary(name: "CNBD", providers: [.apt(["libnbd-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Ceph RBD images through userspace librbd/librados (no kernel rbd module on these hosts).
        .systemLibrary(name: "CRBD", providers: [.apt(["librbd-dev"])]),

        // Owned file descriptors, positional I/O, fsync, SEEK_DATA/HOLE, ioctls, external commands, locks.
        .target(name: "SnapdumpSystem", dependencies: ["CShims"], exclude: ["README.md"]),
        // Proxmox-style file formats: section config, key: value files, property strings.
        .target(name: "SnapdumpConfig", dependencies: ["SnapdumpSystem"], exclude: ["README.md"]),
        // StoragePlugin protocol, plugins, volume ids, snapshots, BlockSource.
        .target(name: "Storage", dependencies: ["SnapdumpSystem", "SnapdumpConfig", "CNBD", "CRBD"], exclude: ["README.md"]),
        // VM configs, QEMU command line, QMP and guest-agent clients, lifecycle, move-disk.
        .target(name: "Guest", dependencies: ["SnapdumpSystem", "SnapdumpConfig", "Storage"], exclude: ["README.md"]),
        // VMA writer and reader, compression codecs, digests, archive names.
        .target(name: "Archive", dependencies: ["SnapdumpSystem", "CShims", "CZstd", "CZlib", "COpenSSL"], exclude: ["README.md"]),
        // Notifications as Proxmox VE 8 sends them: sendmail, SMTP and webhook targets, matchers (notifications.cfg).
        .target(name: "Notify", dependencies: ["SnapdumpSystem", "SnapdumpConfig", "COpenSSL"], exclude: ["README.md"]),
        // The deduplicating repository (PBS datastore layout): blobs, fixed indexes, manifests,
        // chunk store, locks, encryption, verify and gc.
        .target(name: "Repository", dependencies: ["SnapdumpSystem", "Archive", "CZstd", "CZlib", "COpenSSL"], exclude: ["README.md"]),
        // The vzdump engine: modes, fallback, logs, restore.
        .target(name: "Backup", dependencies: ["SnapdumpSystem", "SnapdumpConfig", "Storage", "Guest", "Archive", "Notify", "Repository"], exclude: ["README.md"]),
        // Backup jobs (jobs.cfg), job state, and the snapdumpd scheduler.
        .target(name: "Scheduler", dependencies: [
            "Backup", "Storage", "Archive", "SnapdumpConfig", "SnapdumpSystem",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["README.md"]),
        // ArgumentParser commands, one file per command.
        .target(name: "SnapdumpCLI", dependencies: [
            "Backup", "Repository", "Storage", "Guest", "Archive", "SnapdumpConfig", "SnapdumpSystem", "Scheduler", "Notify",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], exclude: ["README.md"]),
        // The executable: Entrypoint.swift only.
        .executableTarget(name: "snapdump", dependencies: ["SnapdumpCLI", "SnapdumpSystem"]),
        // The scheduler daemon executable (same as `snapdump daemon`).
        .executableTarget(name: "snapdumpd", dependencies: ["SnapdumpCLI", "SnapdumpSystem"]),

        // Shared test helpers: integration gating, fixture locations, running commands.
        .target(name: "TestSupport", dependencies: ["SnapdumpSystem", "SnapdumpConfig", "Guest"], path: "Tests/TestSupport"),
        .testTarget(name: "SnapdumpSystemTests", dependencies: ["SnapdumpSystem", "TestSupport"]),
        .testTarget(name: "SnapdumpConfigTests", dependencies: ["SnapdumpConfig", "SnapdumpSystem", "TestSupport"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "Repository", "SnapdumpSystem", "SnapdumpConfig", "TestSupport"]),
        .testTarget(name: "GuestTests", dependencies: ["Guest", "Storage", "SnapdumpSystem", "TestSupport"]),
        .testTarget(name: "ArchiveTests", dependencies: ["Archive", "SnapdumpSystem", "CShims", "CZstd", "TestSupport"], resources: [.copy("Golden")]),
        .testTarget(name: "RepositoryTests", dependencies: ["Repository", "Archive", "SnapdumpSystem", "TestSupport"]),
        .testTarget(name: "BackupTests", dependencies: ["Backup", "Guest", "Storage", "Archive", "Repository", "SnapdumpConfig", "SnapdumpSystem", "TestSupport"]),
        .testTarget(name: "NotifyTests", dependencies: ["Notify", "SnapdumpConfig", "TestSupport"]),
        .testTarget(name: "SchedulerTests", dependencies: [
            "Scheduler", "SnapdumpCLI", "Backup", "Archive", "SnapdumpConfig", "SnapdumpSystem", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
