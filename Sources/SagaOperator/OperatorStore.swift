import Configuration
import Foundation
import Participant
import SagaPostgres
import SagaSQLite

/// Opens the store a URL names, for one command.
enum OperatorStore {
    /// The store as the tool says it opens it: the URL without its password and, for
    /// PostgreSQL, the schema (from `SAGAKIT_STORE_SCHEMA` or the URL), so that an operator sees
    /// which deployment's tables a command reads.
    static func describe(url: String, reader: ConfigReader) -> String {
        let lowered = url.lowercased()
        guard lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://"),
            let schema = try? PostgresSagaStore.Configuration(reader: reader).schema
        else { return ConnectionURL.redact(url) }
        return "\(ConnectionURL.redact(url)) (schema \(schema))"
    }

    /// Runs the store while `body` runs, then shuts it down.
    ///
    /// `reader` holds the store's other settings (`sagakit.store.*`: a PostgreSQL store's
    /// `schema`, `password`, `tls`, …), read as a service reads them: a tool that ignored
    /// `SAGAKIT_STORE_SCHEMA` would open, and create, SagaKit's tables in another schema.
    ///
    /// A SQLite file that does not exist is an error, not a new empty store: an operator who
    /// mistyped the path must not be told "no sagas match". Neither does the tool create or
    /// migrate a store's schema unless `schema.migrate` says so (`SAGAKIT_STORE_SCHEMA_MIGRATE=true`):
    /// a newer tool must not move a store that older services use to a schema they refuse, and
    /// a schema name that names no store is an error (`schemaTooOld`), not a new empty store.
    static func withStore<T: Sendable>(
        url: String, reader: ConfigReader, logger: Logger, _ body: @Sendable (any SagaStore) async throws -> T
    ) async throws -> T {
        let migrates = try reader.sagaChoice("schema.migrate", default: "false", choices: ["true", "false"]) == "true"
        let lowered = url.lowercased()
        if lowered.hasPrefix("sqlite:") {
            let path = try ConnectionURL(parsing: url).path
            guard FileManager.default.fileExists(atPath: path) else {
                throw SagaError(
                    .invalidConfiguration, "there is no SQLite saga store at \(path)",
                    recoverySuggestion: "point --store-url (or SAGAKIT_STORE_URL) at the file your services use")
            }
            var configuration = try SQLiteSagaStore.Configuration(reader: reader)
            configuration.path = path
            configuration.migratesSchema = migrates
            return try await SQLiteSagaStore(configuration: configuration, logger: logger).withRunning { try await body($0) }
        }
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") {
            // An operator's statements are few (one command, or the console's pages): the store
            // holds no connections between them (`saga list` opens two sessions, not four).
            var configuration = try PostgresSagaStore.Configuration(reader: reader)
            configuration.heldConnections = 0
            configuration.migratesSchema = migrates
            return try await PostgresSagaStore(configuration: configuration, logger: logger).withRunning {
                try await body($0)
            }
        }
        throw SagaError(
            .invalidConfiguration,
            "saga store URL '\(ConnectionURL.redact(url))' has an unknown scheme",
            recoverySuggestion: "use sqlite:///absolute/path/sagas.db or postgres://user:password@host:5432/database"
        )
    }
}
