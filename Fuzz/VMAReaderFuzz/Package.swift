// swift-tools-version:6.0
// The libFuzzer target for the VMA reader. A package of its own, outside the
// main package graph, so the normal build never compiles it: its library
// modules are the main package's own sources, reached through the symlinks
// in Sources/. Build and run with scripts/fuzz-vma.sh (scratch path .build-fuzz).
import PackageDescription

let package = Package(
    name: "VMAReaderFuzz",
    targets: [
        .target(name: "CShims"),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd"),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib"),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto"),
        .target(name: "SnapdumpSystem", dependencies: ["CShims"], exclude: ["README.md"]),
        .target(name: "Archive", dependencies: ["SnapdumpSystem", "CZstd", "CZlib", "COpenSSL"], exclude: ["README.md"]),
        // Declares libFuzzer's LLVMFuzzerRunDriver.
        .target(name: "CFuzzDriver"),
        // Built with -parse-as-library: VMAReaderFuzz_main (SwiftPM's name for main) starts libFuzzer's driver.
        .executableTarget(name: "VMAReaderFuzz", dependencies: ["Archive", "SnapdumpSystem", "CFuzzDriver"]),
    ],
    swiftLanguageModes: [.v6]
)
