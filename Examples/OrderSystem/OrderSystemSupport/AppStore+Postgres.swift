import Logging
import Participant
import SagaPostgres

extension AppStore {
    /// Opens a `PostgresSagaStore` that owns its connection pool (closed by ``close()``).
    static func openPostgres(url: String, logger: Logger) async throws -> AppStore {
        let store = try await PostgresSagaStore(url: url, logger: logger)
        return AppStore(store: store, kind: "postgres", services: []) { await store.shutdown() }
    }
}
