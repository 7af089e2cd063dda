import Foundation
import SagaTestSupport
import SagaTesting

@testable import SagaPostgres

/// Runs `body` with a store in a fresh PostgreSQL schema (dropped afterwards) and a second store
/// with its own connection pool on the same schema, both running. Returns without running `body`
/// when PostgreSQL is not available outside CI.
func withPostgresStore(_ body: (StoreUnderTest, PostgresSagaStore) async throws -> Void) async throws {
    guard let configuration = try await testPostgresConfiguration() else { return }
    try await PostgresSagaStore(configuration: configuration).withRunning { store in
        do {
            try await PostgresSagaStore(configuration: configuration).withRunning { other in
                try await body(StoreUnderTest(store: store, other: other), store)
            }
        } catch {
            try? await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
            throw error
        }
        try await store.executeForTesting("DROP SCHEMA \(store.namespace) CASCADE")
    }
}

/// The test server's configuration with a fresh schema name; `nil` when PostgreSQL is not
/// available outside CI.
func testPostgresConfiguration() async throws -> PostgresSagaStore.Configuration? {
    guard let url = try await TestPostgres.url() else { return nil }
    var configuration = try PostgresSagaStore.Configuration(url: url)
    configuration.schema = "sagakit_test_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
    configuration.maximumConnections = 8
    return configuration
}
