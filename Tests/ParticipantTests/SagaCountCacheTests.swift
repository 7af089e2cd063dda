import Foundation
import Testing

@testable import Participant
@testable import SagaConsole

/// The console's `/metrics` counts every saga by version only every few minutes (a store that
/// keeps millions of finished sagas took seconds a scrape); the unfinished ones, which the alerts
/// watch, are counted at every scrape.
@Suite("The console's counts by version")
struct SagaCountCacheTests {
    static func saga(_ status: SagaStatus, version: Int) -> SagaState {
        let now = Date()
        var state = SagaState(
            id: UUID().uuidString, name: "order", status: status, currentStep: 0, attempt: 1, payload: [:], context: [:],
            history: [], createdAt: now, updatedAt: now, version: 0)
        state.definitionVersion = version
        return state
    }

    @Test func finishedCountsAreReusedAndUnfinishedOnesAreCountedAtEveryScrape() async throws {
        let store = InMemorySagaStore()
        let running = Self.saga(.running, version: 1)
        for state in [
            Self.saga(.completed, version: 1), Self.saga(.completed, version: 1), running, Self.saga(.needsAttention, version: 2),
        ] {
            _ = try await store.create(state, outbox: [])
        }
        let cache = SagaCountCache(interval: .seconds(300))
        let start = ContinuousClock.now
        let first = try await cache.countByVersion(name: "order", store: store, now: start)
        #expect(first == (try await store.countByVersion(name: "order", topology: nil)))

        // The running saga completes; a version 2 saga starts; another version 1 saga compensates.
        var completed = try await store.load(running.id)
        completed.status = .completed
        try await store.commit(SagaTransition(state: completed, expectedVersion: completed.version, outbox: []))
        _ = try await store.create(Self.saga(.running, version: 2), outbox: [])
        _ = try await store.create(Self.saga(.compensated, version: 1), outbox: [])

        let soon = try await cache.countByVersion(name: "order", store: store, now: start + .seconds(10))
        // Unfinished: as they are now.
        #expect(soon[1]?[.running] == 0 && soon[2]?[.running] == 1 && soon[2]?[.needsAttention] == 1, "\(soon)")
        // Finished: as they were at the first count (two completed, none compensated).
        #expect(soon[1]?[.completed] == 2 && soon[1]?[.compensated] == 0, "\(soon)")
        #expect(soon.values.allSatisfy { $0.count == SagaStatus.allCases.count }, "every status, 0 when none")

        // After the interval, everything is counted again.
        let later = try await cache.countByVersion(name: "order", store: store, now: start + .seconds(301))
        #expect(later == (try await store.countByVersion(name: "order", topology: nil)))
        #expect(later[1]?[.completed] == 3 && later[1]?[.compensated] == 1)
    }
}
