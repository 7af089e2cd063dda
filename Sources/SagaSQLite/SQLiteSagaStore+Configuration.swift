public import Configuration
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
        /// Whether ``SQLiteSagaStore/run()`` creates a missing schema and migrates an older one
        /// (`true`, what services do), or fails with `schemaTooOld` instead (`false`: the `saga`
        /// tool and the console, so that an operator's newer tool never migrates a store that
        /// older services use).
        public var migratesSchema = true

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

        /// Reads the configuration through swift-configuration, from keys relative to `reader`
        /// (scope it, for example `config.scoped(to: "sagakit.store")`, whose `url` is then the
        /// environment variable `SAGAKIT_STORE_URL`):
        ///
        /// | key | meaning | default |
        /// |---|---|---|
        /// | `url` (secret) | `sqlite:///absolute/path.db` or `sqlite:relative/path.db` | required unless `path` |
        /// | `path` | the file, instead of `url` | |
        /// | `busy.timeout.seconds` | ``busyTimeout`` | `10` |
        /// | `synchronous` | `full` or `normal` (``synchronous``) | `full` |
        /// | `readers.max` | ``maximumReaderCount`` | `4` |
        /// | `startup.timeout.seconds` | ``startupTimeout`` | `30` |
        /// | `schema.migrate` | ``migratesSchema`` (`true` or `false`) | `true` |
        ///
        /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` naming the key that is missing
        ///   or malformed.
        public init(reader: ConfigReader) throws {
            if let path = reader.string(forKey: "path"), !path.isEmpty {
                self.init(path: path)
            } else if let url = reader.string(forKey: "url", isSecret: true) {
                try self.init(url: url)
            } else {
                throw SagaError(
                    .invalidConfiguration,
                    "no SQLite store: the configuration values \(reader.sagaDescribe("url")) and \(reader.sagaDescribe("path")) are both missing",
                    recoverySuggestion: "set url to sqlite:///absolute/path/sagas.db")
            }
            busyTimeout = try reader.sagaSeconds("busy.timeout.seconds", default: busyTimeout)
            let mode = try reader.sagaChoice("synchronous", default: "full", choices: ["full", "normal"])
            synchronous = mode == "normal" ? .normal : .full
            maximumReaderCount = try reader.sagaInt("readers.max", default: maximumReaderCount)
            startupTimeout = try reader.sagaSeconds("startup.timeout.seconds", default: startupTimeout)
            migratesSchema = try reader.sagaChoice("schema.migrate", default: "true", choices: ["true", "false"]) == "true"
        }

        /// The file path of a `sqlite:` URL, parsed by ``SagaCore/ConnectionURL``: the path of
        /// `sqlite:///abs.db`, `sqlite://localhost/abs.db`, `sqlite:/abs.db` or `sqlite:rel.db`
        /// (percent-decoded; a query is ignored).
        static func path(fromURL url: String) throws -> String {
            let parsed = try ConnectionURL(parsing: url)
            guard parsed.scheme == "sqlite" else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(parsed.redacted)' is not a SQLite URL",
                    recoverySuggestion: "use sqlite:///absolute/path/file.db or sqlite:relative/file.db"
                )
            }
            guard parsed.hosts.isEmpty || parsed.hosts.map(\.name) == ["localhost"], parsed.user == nil else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(parsed.redacted)' names a host; SQLite URLs name a local file",
                    recoverySuggestion: "use sqlite:///absolute/path/file.db (three slashes) or sqlite:relative/file.db"
                )
            }
            guard !parsed.path.isEmpty, parsed.path != "/" else {
                throw SagaError(.invalidConfiguration, "'\(parsed.redacted)' has no file path")
            }
            return parsed.path
        }
    }
}
