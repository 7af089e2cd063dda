public import Logging
public import Participant
import SagaPostgres
import SagaSQLite

/// A saga store opened from a URL, with whatever it needs running alongside.
public struct AppStore: Sendable {
    /// The store. It is a `Service` that must run while it is used: `SagaApplication` runs it,
    /// otherwise add it to the process's `ServiceGroup` (first), or use
    /// ``withStore(url:logger:_:)``.
    public let store: any SagaStore & Service
    /// `sqlite` or `postgres`.
    public let kind: String
    /// More services that must run while the store is used (none today: the stores run their
    /// own connections).
    public let services: [any Service]
    private let closeAction: @Sendable () async -> Void

    init(store: any SagaStore & Service, kind: String, services: [any Service], close: @escaping @Sendable () async -> Void) {
        self.store = store
        self.kind = kind
        self.services = services
        self.closeAction = close
    }

    /// Opens the store a URL names: `sqlite:///abs/path.db` (also `sqlite:relative.db`) or
    /// `postgres://user:password@host:port/database` (`postgresql://` too).
    ///
    /// - Throws: `invalidConfiguration` for another scheme; the store's own errors when it cannot
    ///   be opened.
    public static func open(url: String, logger: Logger) async throws -> AppStore {
        let lowered = url.lowercased()
        if lowered.hasPrefix("sqlite:") {
            let store = try SQLiteSagaStore(url: url, logger: logger)
            return AppStore(store: store, kind: "sqlite", services: []) { await store.shutdown() }
        }
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") {
            return try await openPostgres(url: url, logger: logger)
        }
        throw SagaError(
            .invalidConfiguration,
            "saga store URL '\(ConnectionURL.redact(url))' has an unknown scheme",
            recoverySuggestion: "use sqlite:///absolute/path/sagas.db or postgres://user:password@host:5432/database"
        )
    }

    /// Opens the store, runs it (and its services) while `body` runs, and shuts it down afterwards.
    public static func withStore<Result: Sendable>(
        url: String,
        logger: Logger,
        _ body: @Sendable (any SagaStore) async throws -> Result
    ) async throws -> Result {
        let opened = try await open(url: url, logger: logger)
        let result = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await opened.store.run() }
            for service in opened.services {
                group.addTask { try await service.run() }
            }
            defer { group.cancelAll() }
            return try await body(opened.store)
        }
        await opened.close()
        return result
    }

    /// Releases the store's connections.
    public func close() async { await closeAction() }
}
