import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// A participant's readiness follows what it can do: not ready before it consumes, ready while it
/// does, not ready while its commands fail for want of the store (with the store's error), ready
/// again once one is processed, and gone from the registry when it stops.
@Suite("Participant health", .timeLimit(.minutes(1)))
struct ParticipantHealthTests {
    @Test func readinessFollowsTheStoreAndTheQueue() async throws {
        let health = SagaHealth()
        #expect(!health.report().isReady, "an empty registry (nothing started yet) is not ready")
        let bus = InMemoryBus()
        let store = OutageStore()
        let ledger = Ledger()
        let topology = SagaTopology(prefix: "health-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let runtime = SagaRuntime(definitions: orderDefinitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        let manager = SagaManager(runtime: runtime)
        try await manager.declareTopology()
        let handlers = orderHandlers(ledger: ledger)
        for (service, registry) in handlers {
            try await bus.declare(topology.topology(forService: service, commands: registry.commands))
        }

        try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in handlers {
                var configuration = ParticipantConfiguration(service: service, topology: topology, reaper: nil)
                configuration.health = health
                let participant = SagaParticipant(configuration: configuration, handlers: registry, runtime: runtime)
                group.addTask { try await participant.run() }
            }
            try await eventually("every participant consumes its queue") { health.report().isReady }
            #expect(health.report().components.count == 3)
            #expect(health.report().components.allSatisfy { $0.detail.hasPrefix("consuming queue '\(topology.prefix).") })

            // The store stops answering: the first command that needs it fails, and the
            // participant that took it is not ready, saying why.
            store.down.store(true, ordering: .relaxed)
            let id = try await manager.start("order", payload: ["orderId": "h-1", "amount": 1])
            try await eventually("a participant reports the outage") { !health.report().isReady }
            let failing = try #require(health.report().components.first { !$0.ready })
            #expect(failing.name == "participant 'inventory'")
            #expect(failing.detail.contains("processing fails") && failing.detail.contains("the test store is down"), "\(failing)")

            // Back: the redelivered command is processed, the saga finishes, all ready again.
            store.down.store(false, ordering: .relaxed)
            let final = try await manager.outcome(of: id, timeout: .seconds(30))
            #expect(final.status == .completed)
            try await eventually("ready again once a command is processed") { health.report().isReady }
            group.cancelAll()
        }
        #expect(health.report().components.isEmpty, "stopped participants leave the registry: \(health.report())")
    }

    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<200 {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("not within 10 s: \(what)")
    }
}

/// An in-memory store whose commits and loads fail with `storeUnavailable` while ``down`` is set.
final class OutageStore: SagaStore {
    let base = InMemorySagaStore()
    let down = Atomic<Bool>(false)

    private func check() throws {
        if down.load(ordering: .relaxed) {
            throw SagaError(.storeUnavailable, "the test store is down", recoverySuggestion: "wait")
        }
    }

    func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation { try await base.create(state, outbox: outbox) }
    func load(_ id: SagaID) async throws -> SagaState {
        try check()
        return try await base.load(id)
    }
    func commit(_ transition: SagaTransition) async throws -> SagaState {
        try check()
        return try await base.commit(transition)
    }
    func list(_ query: SagaQuery) async throws -> [SagaState] { try await base.list(query) }
    func countByStatus(name: String?) async throws -> [SagaStatus: Int] { try await base.countByStatus(name: name) }
    func claimStalled(updatedBefore: Date, now: Date, owner: String, lease: Duration, limit: Int) async throws -> [SagaState] {
        try await base.claimStalled(updatedBefore: updatedBefore, now: now, owner: owner, lease: lease, limit: limit)
    }
    func pendingOutbox(topology: String, createdBefore: Date, now: Date, limit: Int) async throws -> [OutboxMessage] {
        try await base.pendingOutbox(topology: topology, createdBefore: createdBefore, now: now, limit: limit)
    }
    func pendingOutbox(createdBefore: Date, limit: Int) async throws -> [OutboxMessage] {
        try await base.pendingOutbox(createdBefore: createdBefore, limit: limit)
    }
    func recordFailedAttempts(_ ids: [String], retryAt: Date) async throws { try await base.recordFailedAttempts(ids, retryAt: retryAt) }
    func markSent(_ ids: [String]) async throws { try await base.markSent(ids) }
}
