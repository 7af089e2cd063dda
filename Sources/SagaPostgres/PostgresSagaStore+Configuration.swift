public import Configuration
import Foundation
import SagaCore

extension PostgresSagaStore {
    /// Where and how to connect.
    public struct Configuration: Sendable {
        /// Whether the connection uses TLS, and what it checks: libpq's `sslmode`.
        ///
        /// | mode | encrypted | server's certificate checked | plaintext when the server has no TLS |
        /// |---|---|---|---|
        /// | `disable` | no | — | yes |
        /// | `prefer` | when the server offers TLS | only with a CA file | yes, logged as a warning |
        /// | `require` | yes | only with a CA file (as libpq) | no, connecting fails |
        /// | `verify-ca` | yes | signed by the CA | no |
        /// | `verify-full` | yes | signed by the CA and naming the host | no |
        ///
        /// Without ``caCertificateFile``, `verify-ca` and `verify-full` trust the system's CAs.
        public enum TLSMode: String, Sendable, CaseIterable {
            /// Never (the default for `localhost`, `127.0.0.1` and `::1`).
            case disable
            /// TLS when the server offers it, plaintext otherwise (the default for other hosts).
            /// Falling back to plaintext is logged as a warning when the store starts.
            case prefer
            /// Always; fail when the server does not offer TLS. The server's certificate is
            /// checked only when a CA file is given (then as `verify-ca`), like libpq.
            case require
            /// Always, and the server's certificate must be signed by the CA
            /// (``caCertificateFile``, or the system's CAs).
            case verifyCA = "verify-ca"
            /// Always, and the server's certificate must be signed by the CA and name the host
            /// (a DNS name, or an IP address when ``host`` is one): the mode that stops a
            /// man in the middle.
            case verifyFull = "verify-full"
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
        /// TLS (libpq's `sslmode`).
        public var tls: TLSMode
        /// The PEM file of the CA(s) that signed the server's certificate (libpq's `sslrootcert`);
        /// `nil` for the system's CAs. Used by every mode but `disable`; see ``TLSMode``.
        public var caCertificateFile: String?
        /// The PostgreSQL schema (namespace) that holds SagaKit's tables; created when missing.
        /// Several independent SagaKit deployments may share a database with different schemas.
        public var schema: String
        /// How long connecting may take before the store reports `storeUnavailable`.
        public var connectTimeout: Duration
        /// The most connections the store's pool opens.
        public var maximumConnections: Int
        /// How long a connection may sit unused before the pool runs `SELECT 1` on it, which
        /// keeps it alive through NATs and firewalls that drop idle connections; `nil` (the
        /// default) sends none. postgres-nio arms this timer (a task and a clock timer) every
        /// time a connection returns to the pool, which is after every batch: a participant's
        /// CPU per step at C = 50 was 477 µs with it, 420 µs without (`Docs/Operations.md`,
        /// "Throughput"). Without it, a statement on a connection that a firewall dropped
        /// silently fails after its attempt timeout (`max(5 s, statementTimeout / 3)`) and runs
        /// again on a fresh connection; a connection the server closed fails at once and is
        /// replaced. Behind a NAT that drops idle connections, set it, or let the server send
        /// TCP keep-alives (`ALTER ROLE … SET tcp_keepalives_idle = 60`, which costs the client
        /// nothing).
        public var keepAliveInterval: Duration?
        /// How many of the pool's connections the store keeps leased between its statements
        /// (at most ``maximumConnections`` − 1; `0` for none). A connection returned to
        /// postgres-nio's pool arms an idle timer whose task and clock timer live on for the
        /// idle timeout (60 s) even when the next lease cancels it: after every batch, hundreds
        /// of times a second in a busy participant. Statements run on a held connection when
        /// one is idle and lease from the pool otherwise; a held connection that fails or
        /// closes is given back and replaced. Each process keeps this many connections open
        /// while it runs (count them against the server's `max_connections`). None are held
        /// when ``keepAliveInterval`` is set: postgres-nio pings only the connections in its
        /// pool.
        public var heldConnections: Int
        /// How long a statement (waiting for a connection and every attempt included) may take
        /// before the store gives up on it with `storeUnavailable`. Within it, a statement that
        /// fails on its connection (a restarted server, a reset connection) runs again on a fresh
        /// one when that is safe (see `Docs/Stores.md`), each attempt of a retryable statement
        /// bounded by `max(5 s, statementTimeout / 3)`. A connection that died without the client
        /// noticing would otherwise hold up every saga of the process; the statement may still
        /// have been applied, which the version check makes safe to retry.
        public var statementTimeout: Duration
        /// How long an operation made before the store runs waits for
        /// ``PostgresSagaStore/run()`` to connect, before failing with `storeUnavailable`.
        public var startupTimeout: Duration
        /// The `application_name` the store's connections give the server, which
        /// `pg_stat_activity` and the server's log show (and a start that waits for another
        /// session's migration names): by default `sagakit` and the process's name, for example
        /// `sagakit payment-service`. The server keeps at most 63 bytes.
        public var applicationName: String
        /// Whether ``PostgresSagaStore/run()`` creates a missing schema and migrates an older one
        /// (`true`, what services do), or fails with `schemaTooOld` instead (`false`: the `saga`
        /// tool and the console, so that an operator's newer tool never migrates a store that
        /// older services use, and a wrong schema name is reported instead of created).
        public var migratesSchema = true

        /// Creates a configuration.
        public init(
            host: String, port: Int = 5432, username: String, password: String?, database: String,
            tls: TLSMode? = nil, schema: String = "public", connectTimeout: Duration = .seconds(10),
            maximumConnections: Int = 20, statementTimeout: Duration = .seconds(30),
            startupTimeout: Duration = .seconds(30), caCertificateFile: String? = nil,
            keepAliveInterval: Duration? = nil, heldConnections: Int = 2, applicationName: String? = nil
        ) {
            self.host = host
            self.port = port
            self.username = username
            self.password = password
            self.database = database
            self.tls = tls ?? (["localhost", "127.0.0.1", "::1"].contains(host) ? .disable : .prefer)
            self.caCertificateFile = caCertificateFile
            self.schema = schema
            self.connectTimeout = connectTimeout
            self.maximumConnections = maximumConnections
            self.keepAliveInterval = keepAliveInterval
            self.heldConnections = heldConnections
            self.statementTimeout = statementTimeout
            self.startupTimeout = startupTimeout
            self.applicationName = applicationName ?? Self.defaultApplicationName
        }

        /// `sagakit` and the process's name.
        static var defaultApplicationName: String {
            "sagakit \(ProcessInfo.processInfo.processName)"
        }

        /// Parses `postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=/etc/ca.pem&schema=sagas`
        /// (`postgresql://` too) with ``SagaCore/ConnectionURL``. `sslmode` is `disable`, `prefer`,
        /// `require`, `verify-ca` or `verify-full` (see ``TLSMode``; libpq's `allow` means
        /// `disable`); `sslrootcert` is the CA file (``caCertificateFile``; `system` for the
        /// system's CAs); `schema` defaults to `public`; `application_name` sets
        /// ``applicationName``; the database defaults to the user name.
        /// Client certificates (`sslcert`, `sslkey`) are not supported and refused.
        ///
        /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration`, quoting the URL without its
        ///   password.
        public init(url: String) throws {
            let parsed = try ConnectionURL(parsing: url)
            let redacted = parsed.redacted
            guard ["postgres", "postgresql"].contains(parsed.scheme) else {
                throw SagaError(
                    .invalidConfiguration,
                    "'\(redacted)' is not a PostgreSQL URL",
                    recoverySuggestion: "use postgres://user:password@host:5432/database"
                )
            }
            guard parsed.hosts.count == 1, let host = parsed.hosts.first else {
                throw SagaError(
                    .invalidConfiguration,
                    parsed.hosts.isEmpty
                        ? "the PostgreSQL URL '\(redacted)' names no host" : "the PostgreSQL URL '\(redacted)' names several hosts",
                    recoverySuggestion: "use postgres://user:password@host:5432/database (one host)"
                )
            }
            guard let username = parsed.user, !username.isEmpty else {
                throw SagaError(.invalidConfiguration, "the PostgreSQL URL '\(redacted)' has no user name")
            }
            var tls: TLSMode?
            if let mode = parsed.queryItems["sslmode"] {
                if mode.lowercased() == "allow" {
                    tls = .disable
                } else if let known = TLSMode(rawValue: mode.lowercased()) {
                    tls = known
                } else {
                    throw SagaError(
                        .invalidConfiguration, "unknown sslmode '\(mode)' in the PostgreSQL URL '\(redacted)'",
                        recoverySuggestion: "use sslmode=" + TLSMode.allCases.map(\.rawValue).joined(separator: ", "))
                }
            }
            for unsupported in ["sslcert", "sslkey", "sslpassword", "sslcrl"] where parsed.queryItems[unsupported] != nil {
                throw SagaError(
                    .invalidConfiguration,
                    "the PostgreSQL URL '\(redacted)' sets \(unsupported), which SagaKit does not support",
                    recoverySuggestion: "remove it; SagaKit's PostgreSQL store logs in with a password, over TLS with sslmode")
            }
            var caCertificateFile: String?
            if let file = parsed.queryItems["sslrootcert"], !file.isEmpty, file != "system" {
                caCertificateFile = file
            }
            let database = String(parsed.path.drop(while: { $0 == "/" }))
            self.init(
                host: host.name, port: host.port ?? 5432, username: username, password: parsed.password,
                database: database.isEmpty ? username : database, tls: tls,
                schema: parsed.queryItems["schema"].flatMap { $0.isEmpty ? nil : $0 } ?? "public",
                caCertificateFile: caCertificateFile,
                applicationName: parsed.queryItems["application_name"].flatMap { $0.isEmpty ? nil : $0 }
            )
        }

        /// Reads the configuration through swift-configuration, from keys relative to `reader`
        /// (scope it, for example `config.scoped(to: "sagakit.store")`, whose `url` is then the
        /// environment variable `SAGAKIT_STORE_URL`):
        ///
        /// | key | meaning | default |
        /// |---|---|---|
        /// | `url` (secret) | `postgres://user:password@host:port/database?sslmode=…&schema=…` | required |
        /// | `password` (secret) | replaces the URL's password (keep it out of the URL) | the URL's |
        /// | `schema` | PostgreSQL schema of SagaKit's tables | the URL's, or `public` |
        /// | `tls` | `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (see ``TLSMode``) | the URL's `sslmode`, or by host |
        /// | `tls.ca.file` | ``caCertificateFile`` (PEM) | the URL's `sslrootcert`, or the system's CAs |
        /// | `connect.timeout.seconds` | ``connectTimeout`` | `10` |
        /// | `connections.max` | ``maximumConnections`` | `20` |
        /// | `connections.held` | ``heldConnections`` | `2` |
        /// | `keepalive.seconds` | ``keepAliveInterval`` (`0` or `off`: none) | none |
        /// | `statement.timeout.seconds` | ``statementTimeout`` | `30` |
        /// | `startup.timeout.seconds` | ``startupTimeout`` | `30` |
        /// | `application.name` | ``applicationName`` | the URL's `application_name`, or `sagakit <process>` |
        /// | `schema.migrate` | ``migratesSchema`` (`true` or `false`) | `true` |
        ///
        /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` naming the key that is missing
        ///   or malformed (never quoting a secret).
        public init(reader: ConfigReader) throws {
            guard let url = reader.string(forKey: "url", isSecret: true) else {
                throw SagaError(
                    .invalidConfiguration, "no PostgreSQL store URL: the configuration value \(reader.sagaDescribe("url")) is missing",
                    recoverySuggestion: "set it to postgres://user:password@host:5432/database")
            }
            try self.init(url: url)
            if let password = reader.string(forKey: "password", isSecret: true) { self.password = password }
            if let schema = reader.string(forKey: "schema") {
                // An empty or malformed value is named, not read as "the default schema" (where
                // the tools would find no sagas, and say so without an error).
                guard !schema.isEmpty else {
                    throw SagaError(
                        .invalidConfiguration, "the configuration value \(reader.sagaDescribe("schema")) is empty",
                        recoverySuggestion: "set it to the schema of SagaKit's tables, or remove it (then the URL's ?schema=, else public)")
                }
                do {
                    _ = try PostgresSagaStore.quotedSchema(schema)
                } catch let error as SagaError {
                    throw SagaError(
                        .invalidConfiguration, "the configuration value \(reader.sagaDescribe("schema")): \(error.message)",
                        recoverySuggestion: error.recoverySuggestion)
                }
                self.schema = schema
            }
            if reader.string(forKey: "tls") != nil {
                let mode = try reader.sagaChoice("tls", default: tls.rawValue, choices: TLSMode.allCases.map(\.rawValue))
                tls = TLSMode(rawValue: mode) ?? tls
            }
            if let file = reader.string(forKey: "tls.ca.file"), !file.isEmpty { caCertificateFile = file }
            connectTimeout = try reader.sagaSeconds("connect.timeout.seconds", default: connectTimeout)
            maximumConnections = try reader.sagaInt("connections.max", default: maximumConnections)
            heldConnections = try reader.sagaInt("connections.held", default: heldConnections, in: 0...Int.max)
            keepAliveInterval = try reader.sagaSecondsOrOff("keepalive.seconds", default: keepAliveInterval)
            statementTimeout = try reader.sagaSeconds("statement.timeout.seconds", default: statementTimeout)
            startupTimeout = try reader.sagaSeconds("startup.timeout.seconds", default: startupTimeout)
            if let name = reader.string(forKey: "application.name"), !name.isEmpty { applicationName = name }
            migratesSchema = try reader.sagaChoice("schema.migrate", default: "true", choices: ["true", "false"]) == "true"
        }

        /// `host:port/database`, as error messages say it.
        public var location: String { "\(host):\(port)/\(database)" }
    }
}
