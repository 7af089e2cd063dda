import Foundation
import SagaCore
import Testing

/// Every store keeps saga definitions by name and version.
@Suite("Stored saga definitions", .timeLimit(.minutes(2)))
struct DefinitionStoreTests {
    static func trip(version: Int = 1, flightAction: String = "flights.book") throws -> SagaDefinition {
        try SagaBuilder("trip")
            .version(version)
            .step("hotel", action: "hotels.book", compensation: "hotels.cancel", options: StepOptions(timeout: .seconds(5)))
            .step("flight", action: flightAction, compensation: "flights.cancel")
            .step("confirm", action: "trips.confirm", options: .pivot)
            .deadline(.seconds(600))
            .build()
    }

    @Test(arguments: StoreKind.allCases)
    func registersAndReadsBackByNameAndVersion(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let one = try Self.trip()
            let two = try Self.trip(version: 2, flightAction: "flights.reserve")
            let before = Date().addingTimeInterval(-1)
            try await fixture.store.register(one)
            try await fixture.store.register(two)
            #expect(try await fixture.other.definition(named: "trip", version: 1) == one)
            #expect(try await fixture.other.definition(named: "trip", version: 2) == two)
            let infos = try await fixture.other.definitions()
            #expect(infos.map(\.name) == ["trip", "trip"])
            #expect(infos.map(\.version) == [1, 2])
            #expect(infos.map(\.hash) == [one.contentHash, two.contentHash])
            #expect(infos.allSatisfy { $0.registeredAt > before && $0.registeredAt < Date().addingTimeInterval(1) })
        }
    }

    @Test(arguments: StoreKind.allCases)
    func registeringIdenticalContentAgainIsANoOp(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            try await fixture.store.register(try Self.trip())
            let first = try await fixture.store.definitions()
            try await fixture.other.register(try Self.trip())
            try await fixture.store.register(try Self.trip())
            #expect(try await fixture.store.definitions() == first)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func theSameVersionWithOtherContentIsRefusedWithTheDifferences(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            try await fixture.store.register(try Self.trip())
            let changed = try Self.trip(flightAction: "flights.reserve")
            let error = await #expect(throws: SagaError.self) { try await fixture.other.register(changed) }
            #expect(error?.code == .invalidDefinition)
            #expect(
                error?.message.contains("step 2 'flight': action flights.book vs flights.reserve") == true, "\(String(describing: error))")
            #expect(try await fixture.store.definition(named: "trip", version: 1) == (try Self.trip()), "the stored one is kept")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func anUnknownDefinitionIsReportedAsSuch(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            #expect(try await fixture.store.definitions().isEmpty)
            let error = await #expect(throws: SagaError.self) { try await fixture.store.definition(named: "trip", version: 1) }
            #expect(error?.code == .unknownDefinition)
            try await fixture.store.register(try Self.trip())
            let other = await #expect(throws: SagaError.self) { try await fixture.store.definition(named: "trip", version: 2) }
            #expect(other?.code == .unknownDefinition)
        }
    }

    @Test func aStoreWithoutDefinitionsSaysSo() async throws {
        let store = MinimalStore()
        let error = await #expect(throws: SagaError.self) { try await store.register(try Self.trip()) }
        #expect(error?.code == .unsupported)
        #expect(error?.message.contains("does not keep saga definitions") == true)
        await #expect(throws: SagaError.self) { try await store.definitions() }
        await #expect(throws: SagaError.self) { try await store.definition(named: "trip", version: 1) }
    }
}

/// A third-party store written before stores kept definitions: it still compiles.
private struct MinimalStore: SagaStore {
    let base = InMemorySagaStore()
    func create(_ state: SagaState, outbox: [OutboxMessage]) async throws -> SagaCreation { try await base.create(state, outbox: outbox) }
    func load(_ id: SagaID) async throws -> SagaState { try await base.load(id) }
    func commit(_ transition: SagaTransition) async throws -> SagaState { try await base.commit(transition) }
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
