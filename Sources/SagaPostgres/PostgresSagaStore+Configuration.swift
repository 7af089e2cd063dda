import Foundation
import SagaCore

extension PostgresSagaStore {
    /// Where and how to connect.
    public struct Configuration: Sendable {
        /// Whether the connection uses TLS.
        public enum TLSMode: String, Sendable {
            /// Never (the default for `localhost` and `127.0.0.1`).
            case disable
            /// When the server offers it (the default for other hosts).
            case prefer
            /// Always; fail when the server does not offer it.
            case require
        }

        /// The server's host name or address.
        public var host: String
        /// The server's port.
        public var port: Int
        /// The user name.
        public var username: String
        /// The password.
        public var password: String?
        /// The database.
        public var database: String
        /// TLS.
        public var tls: TLSMode
        /// The PostgreSQL schema (namespace) that holds SagaKit's tables; created when missing.
        /// Several independent SagaKit deployments may share a database with different schemas.
        public var schema: String
        /// How long connecting may take before the store reports `storeUnavailable`.
        public var connectTimeout: Duration
        /// The most connections the store's pool opens.
        public var maximumConnections: Int
        /// How long a statement (waiting for a connection included) may take before the store
        /// gives up on it with `storeUnavailable`. A connection that died without the client
        /// noticing would otherwise hold up every saga of the process; the statement may still
        /// have been applied, which the version check makes safe to retry.
        public var statementTimeout: Duration
        /// How long an operation made before the store runs waits for
        /// ``PostgresSagaStore/run()`` to connect, before failing with `storeUnavailable`.
        public var startupTimeout: Duration

        /// Creates a configuration.
        public init(
            host: String, port: Int = 5432, username: String, password: String?, database: String,
            tls: TLSMode? = nil, schema: String = "public", connectTimeout: Duration = .seconds(10),
            maximumConnections: Int = 20, statementTimeout: Duration = .seconds(30),
            startupTimeout: Duration = .seconds(30)
        ) {
            self.host = host
            self.port = port
            self.username = username
            self.password = password
            self.database = database
            self.tls = tls ?? (["localhost", "127.0.0.1", "::1"].contains(host) ? .disable : .prefer)
            self.schema = schema
            self.connectTimeout = connectTimeout
            self.maximumConnections = maximumConnections
            self.statementTimeout = statementTimeout
            self.startupTimeout = startupTimeout
        }

        /// Parses `postgres://user:password@host:port/database?sslmode=disable&schema=sagas`
        /// (`postgresql://` too). `sslmode` is `disable`, `prefer` or `require` (`verify-ca` and
        /// `verify-full` mean `require`); `schema` defaults to `public`.
        ///
        /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration`.
        public init(url: String) throws {
            guard let components = URLComponents(string: url),
                let scheme = components.scheme?.lowercased(), ["postgres", "postgresql"].contains(scheme),
                let host = components.host, !host.isEmpty
            else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(Self.redacted(url))' is not a PostgreSQL URL",
                    recoverySuggestion: "use postgres://user:password@host:5432/database"
                )
            }
            guard let username = components.user, !username.isEmpty else {
                throw SagaError(.invalidConfiguration, "the PostgreSQL URL '\(Self.redacted(url))' has no user name")
            }
            let database = String(components.path.drop(while: { $0 == "/" }))
            let query = Dictionary(
                (components.queryItems ?? []).map { ($0.name.lowercased(), $0.value ?? "") }, uniquingKeysWith: { $1 }
            )
            var tls: TLSMode?
            if let mode = query["sslmode"] {
                switch mode.lowercased() {
                case "disable", "allow": tls = .disable
                case "prefer": tls = .prefer
                case "require", "verify-ca", "verify-full": tls = .require
                default:
                    throw SagaError(.invalidConfiguration, "unknown sslmode '\(mode)' in the PostgreSQL URL")
                }
            }
            self.init(
                host: host, port: components.port ?? 5432, username: username,
                password: components.password?.removingPercentEncoding ?? components.password,
                database: database.isEmpty ? username : (database.removingPercentEncoding ?? database), tls: tls,
                schema: query["schema"].flatMap { $0.isEmpty ? nil : $0 } ?? "public"
            )
        }

        /// `host:port/database`, as error messages say it.
        public var location: String { "\(host):\(port)/\(database)" }

        /// The URL without its password.
        static func redacted(_ url: String) -> String {
            guard var components = URLComponents(string: url), components.password != nil else { return url }
            components.password = "***"
            return components.string ?? url
        }
    }
}
