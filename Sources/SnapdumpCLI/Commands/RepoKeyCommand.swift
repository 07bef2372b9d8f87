import ArgumentParser
import Foundation
import Repository

/// `snapdump repo key create|show FILE`, like proxmox-backup-client key.
struct RepoKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Create or show repository encryption keys.", subcommands: [Create.self, Show.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a key file (AES-256-GCM). --kdf scrypt protects it with the passphrase in SNAPDUMP_ENCRYPTION_PASSWORD.")
        @Argument(help: "Key file to write (root-only; must not exist).") var file: String
        @Option(help: "none (for unattended backups) or scrypt.") var kdf: String = "none"

        func run() throws {
            let passphrase: String?
            switch kdf {
            case "none": passphrase = nil
            case "scrypt":
                guard let p = ProcessInfo.processInfo.environment["SNAPDUMP_ENCRYPTION_PASSWORD"] else {
                    throw ValidationError("--kdf scrypt needs the passphrase in SNAPDUMP_ENCRYPTION_PASSWORD")
                }
                passphrase = p
            default: throw ValidationError("unknown --kdf '\(kdf)' (none, scrypt)")
            }
            let (kf, _) = try KeyFile.create(passphrase: passphrase)
            try kf.save(absolutePath(file))
            print("fingerprint: \(kf.fingerprint)")
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a key file's fingerprint, kdf and dates (opens it to check it).")
        @Argument(help: "Key file.") var file: String

        func run() throws {
            let path = absolutePath(file)
            let kf = try KeyFile.load(path)
            if !kf.needsPassphrase || ProcessInfo.processInfo.environment["SNAPDUMP_ENCRYPTION_PASSWORD"] != nil {
                _ = try KeyFile.crypt(from: path)
            }
            print("path: \(path)")
            print("kdf: \(kf.kdf == nil ? "none" : "scrypt")")
            print("created: \(kf.created)")
            print("modified: \(kf.modified)")
            print("fingerprint: \(kf.fingerprint)")
        }
    }
}
