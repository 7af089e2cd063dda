import Foundation
import SagaTestSupport

@testable import SagaPostgres

/// A store in a fresh PostgreSQL schema (dropped afterwards), and a second store with its own
/// connection pool on the same schema. `nil` when PostgreSQL is not available outside CI.
func makePostgresStore() async throws -> StoreUnderTest? {
    guard let url = try await TestPostgres.url() else { return nil }
    var configuration = try PostgresSagaStore.Configuration(url: url)
    configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
    configuration.maximumConnections = 8
    let store = try await PostgresSagaStore(configuration: configuration)
    let other = try await PostgresSagaStore(configuration: configuration)
    return StoreUnderTest(
        store: store, other: other,
        cleanup: {
            await other.shutdown()
            try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
            await store.shutdown()
        }
    )
}
