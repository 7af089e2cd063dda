import Participant
import SagaTesting
import Testing

/// What a team writing its own `SagaStore` does, shown on SagaKit's in-memory store: run every
/// check of the public conformance suite, each on a fresh, empty store.
@Suite struct StoreConformanceTests {
    @Test(.timeLimit(.minutes(1)), arguments: SagaStoreConformance.checks)
    func inMemoryStoreConforms(_ check: SagaStoreConformance.Check) async throws {
        try await check.run { body in
            let store = InMemorySagaStore()
            // One object is both handles: there is no second connection to an in-memory store.
            try await body(.init(store: store, other: store))
        }
    }
}
