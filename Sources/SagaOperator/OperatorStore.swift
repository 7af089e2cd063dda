import Foundation
import Participant
import SagaPostgres
import SagaSQLite

/// Opens the store a URL names, for one command.
enum OperatorStore {
    /// Runs the store while `body` runs, then shuts it down.
    ///
    /// A SQLite file that does not exist is an error, not a new empty store: an operator who
    /// mistyped the path must not be told "no sagas match".
    static func withStore<T: Sendable>(url: String, logger: Logger, _ body: @Sendable (any SagaStore) async throws -> T) async throws
        -> T
    {
        let lowered = url.lowercased()
        if lowered.hasPrefix("sqlite:") {
            let path = try ConnectionURL(parsing: url).path
            guard FileManager.default.fileExists(atPath: path) else {
                throw SagaError(
                    .invalidConfiguration, "there is no SQLite saga store at \(path)",
                    recoverySuggestion: "point --store-url (or SAGAKIT_STORE_URL) at the file your services use")
            }
            return try await SQLiteSagaStore(url: url, logger: logger).withRunning { try await body($0) }
        }
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") {
            // An operator's statements are few (one command, or the console's pages): the store
            // holds no connections between them (`saga list` opens two sessions, not four).
            var configuration = try PostgresSagaStore.Configuration(url: url)
            configuration.heldConnections = 0
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
