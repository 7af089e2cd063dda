import Foundation
import SagaCore

extension SQLiteSagaStore {
    /// Which file the store uses and how it opens it.
    public struct Configuration: Sendable {
        /// The database file; a relative path is resolved against the current directory when the
        /// store is created.
        public var path: String
        /// How long a write waits for other connections' transactions (other processes) before
        /// it fails with `storeUnavailable`.
        public var busyTimeout: Duration
        /// Whether every commit is flushed to disk before it returns (`full`, survives power
        /// loss) or only written to the WAL (`normal`, survives a process crash).
        public var synchronous: Synchronous
        /// The most concurrent read connections this process opens.
        public var maximumReaderCount: Int
        /// How long an operation made before the store runs waits for ``SQLiteSagaStore/run()``
        /// to open it, before failing with `storeUnavailable`.
        public var startupTimeout: Duration

        /// SQLite's `synchronous` setting.
        public enum Synchronous: String, Sendable {
            /// `PRAGMA synchronous = FULL`: durable across power loss.
            case full = "FULL"
            /// `PRAGMA synchronous = NORMAL`: durable across process crashes; the last
            /// transactions may be lost on power loss (the file is never corrupted).
            case normal = "NORMAL"
        }

        /// Creates a configuration.
        public init(
            path: String, busyTimeout: Duration = .seconds(10), synchronous: Synchronous = .full,
            maximumReaderCount: Int = 4, startupTimeout: Duration = .seconds(30)
        ) {
            self.path = path
            self.busyTimeout = busyTimeout
            self.synchronous = synchronous
            self.maximumReaderCount = maximumReaderCount
            self.startupTimeout = startupTimeout
        }

        /// A configuration with the default settings for the file a URL names:
        /// `sqlite:///absolute/path/file.db`, `sqlite:relative/file.db`, or
        /// `sqlite:/absolute/path/file.db`.
        ///
        /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` for another scheme or an empty
        ///   path.
        public init(url: String) throws {
            self.init(path: try Self.path(fromURL: url))
        }

        /// The file path of a `sqlite:` URL.
        static func path(fromURL url: String) throws -> String {
            guard url.lowercased().hasPrefix("sqlite:") else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(url)' is not a SQLite URL",
                    recoverySuggestion: "use sqlite:///absolute/path/file.db or sqlite:relative/file.db"
                )
            }
            var rest = String(url.dropFirst("sqlite:".count))
            if rest.hasPrefix("//") {
                // sqlite://<authority>/<path>: only an empty authority (or localhost) is meaningful.
                rest.removeFirst(2)
                if rest.hasPrefix("localhost/") { rest.removeFirst("localhost".count) }
                guard rest.hasPrefix("/") else {
                    throw SagaError(
                        .invalidConfiguration,
                        "'\(url)' names a host; SQLite URLs name a local file",
                        recoverySuggestion: "use sqlite:///absolute/path/file.db (three slashes) or sqlite:relative/file.db"
                    )
                }
            }
            if let query = rest.firstIndex(of: "?") { rest = String(rest[..<query]) }
            let path = rest.removingPercentEncoding ?? rest
            guard !path.isEmpty, path != "/" else {
                throw SagaError(.invalidConfiguration, "'\(url)' has no file path")
            }
            return path
        }

    }
}
