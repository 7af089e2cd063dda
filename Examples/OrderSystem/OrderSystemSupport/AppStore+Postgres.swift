import Logging
import Participant
import SagaPostgres

extension AppStore {
    /// Creates a `PostgresSagaStore` that owns its connection pool (it runs as a `Service`;
    /// ``close()`` shuts it down).
    static func openPostgres(url: String, logger: Logger) async throws -> AppStore {
        let store = try PostgresSagaStore(url: url, logger: logger)
        return AppStore(store: store, kind: "postgres", services: []) { await store.shutdown() }
    }
}
