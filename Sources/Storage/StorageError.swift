/// A storage operation that cannot be done; names the storage, volume or snapshot and the cause.
public struct StorageError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case unknownStorage, duplicateStorage, invalidArgument, notFound, alreadyExists
        case snapshotUnsupported, noSpace, busy, backend
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
