import SagaCore
import SagaTestSupport
import SagaTesting
import Testing

/// SagaKit's stores against the public conformance suite (`SagaStoreConformance` in the
/// `SagaTesting` product): every check on every store, each on a fresh, empty store.
@Suite("SagaStore conformance", .timeLimit(.minutes(1)))
struct SagaStoreConformanceTests {
    @Test("Every store passes every conformance check", arguments: SagaStoreConformance.checks, StoreKind.allCases)
    func storePassesCheck(_ check: SagaStoreConformance.Check, kind: StoreKind) async throws {
        // Without a local PostgreSQL (and outside CI) the PostgreSQL cases skip, as every
        // PostgreSQL test does; in CI `TestPostgres.url()` throws instead.
        if kind == .postgres, try await TestPostgres.url() == nil { return }
        try await check.run { body in try await withStore(kind, body) }
    }
}
