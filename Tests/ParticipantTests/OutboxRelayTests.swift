import Foundation
import SagaSQLite
import Testing

@testable import Participant

/// The outbox relay publishes only its own topology's messages, and messages that keep failing
/// do not hold up the others.
@Suite("Outbox relay", .timeLimit(.minutes(1)))
struct OutboxRelayTests {
    let alpha = SagaTopology(prefix: "alpha-\(UUID().uuidString.prefix(8))", delayLevels: [60])
    let beta = SagaTopology(prefix: "beta-\(UUID().uuidString.prefix(8))", delayLevels: [60])

    /// Both topologies declared, each with a queue bound to `order.reserve`: a relay that
    /// published the other topology's messages would succeed, and the other queue would show it.
    private func makeBus() async throws -> InMemoryBus {
        let bus = InMemoryBus()
        for topology in [alpha, beta] {
            try await bus.declare(topology.topology(forService: "inventory", commands: ["order.reserve"]))
        }
        return bus
    }

    private func relay(_ topology: SagaTopology, bus: InMemoryBus, store: any SagaStore) throws -> OutboxRelay {
        OutboxRelay(
            engine: SagaEngine(store: store, bus: bus, definitions: try SagaDefinitionRegistry(), topology: topology),
            pollInterval: .seconds(1), gracePeriod: .zero, logger: quietTestLogger)
    }

    private func message(_ exchange: String, sagaID: SagaID, age: TimeInterval) -> OutboxMessage {
        OutboxMessage(
            id: "msg-\(UUID().uuidString)", sagaID: sagaID, exchange: exchange, routingKey: "order.reserve",
            body: Array("{}".utf8), headers: [:], createdAt: Date().addingTimeInterval(-age))
    }

    private func state(_ id: SagaID) -> SagaState {
        SagaState(
            id: id, name: "order", status: .running, currentStep: 0, attempt: 1, payload: [:], context: [:], history: [],
            createdAt: Date(), updatedAt: Date(), version: 0)
    }

    /// Messages of both topologies in one store; the relay of `alpha` publishes alpha's only and
    /// never touches beta's.
    private func checkARelayPublishesOnlyItsTopology(store: any SagaStore) async throws {
        let bus = try await makeBus()
        let alphaMessages = [
            message(alpha.commandsExchange, sagaID: "a-1", age: 30), message(alpha.delayName(seconds: 60), sagaID: "a-1", age: 20),
        ]
        let betaMessages = [
            message(beta.commandsExchange, sagaID: "b-1", age: 40), message(beta.delayName(seconds: 60), sagaID: "b-1", age: 10),
        ]
        _ = try await store.create(state("a-1"), outbox: alphaMessages)
        _ = try await store.create(state("b-1"), outbox: betaMessages)

        #expect(try await relay(alpha, bus: bus, store: store).relayOnce() == 2)
        #expect(bus.messageCount(queue: alpha.queue(forService: "inventory")) == 1)
        #expect(bus.messageCount(queue: alpha.delayName(seconds: 60)) == 1)
        #expect(bus.messageCount(queue: beta.queue(forService: "inventory")) == 0)
        #expect(bus.messageCount(queue: beta.delayName(seconds: 60)) == 0)
        let left = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
        #expect(left.map(\.id) == betaMessages.map(\.id), "beta's messages stay pending, untouched")
        #expect(left.allSatisfy { $0.publishAttempts == 0 })
        #expect(try await relay(alpha, bus: bus, store: store).relayOnce() == 0)

        #expect(try await relay(beta, bus: bus, store: store).relayOnce() == 2)
        #expect(bus.messageCount(queue: beta.queue(forService: "inventory")) == 1)
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).isEmpty)
    }

    @Test func aRelayPublishesOnlyItsTopologysMessagesInMemory() async throws {
        try await checkARelayPublishesOnlyItsTopology(store: InMemorySagaStore())
    }

    @Test func aRelayPublishesOnlyItsTopologysMessagesOnSQLite() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-relay-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await SQLiteSagaStore(path: directory.appendingPathComponent("sagas.db").path, logger: quietTestLogger).withRunning {
            store in
            try await checkARelayPublishesOnlyItsTopology(store: store)
        }
    }

    /// Messages to an exchange that does not exist can never be published; older than a good
    /// message and more than one pass holds, they must not keep it waiting.
    @Test func messagesThatCannotBePublishedDoNotHoldUpTheOthers() async throws {
        let bus = try await makeBus()
        let store = InMemorySagaStore()
        let broken = (0..<6).map { index in message("\(alpha.prefix).delay.999s", sagaID: "a-1", age: 60 - Double(index)) }
        let good = message(alpha.commandsExchange, sagaID: "a-2", age: 30)
        _ = try await store.create(state("a-1"), outbox: broken)
        _ = try await store.create(state("a-2"), outbox: [good])
        let relay = try relay(alpha, bus: bus, store: store)

        let now = Date()
        #expect(try await relay.relayOnce(limit: 4, now: now) == 0)
        #expect(try await relay.relayOnce(limit: 4, now: now) == 1)
        #expect(bus.messageCount(queue: alpha.queue(forService: "inventory")) == 1)
        let left = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
        #expect(Set(left.map(\.id)) == Set(broken.map(\.id)))
        #expect(left.allSatisfy { $0.publishAttempts == 1 })
        // Not due again before their backoff.
        #expect(try await relay.relayOnce(limit: 4, now: now.addingTimeInterval(0.5)) == 0)
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).allSatisfy { $0.publishAttempts == 1 })
        // Then due, and counted again.
        _ = try await relay.relayOnce(limit: 10, now: now.addingTimeInterval(2))
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).allSatisfy { $0.publishAttempts == 2 })
    }

    /// A backlog larger than a batch is drained in one pass, and two relays working on it at
    /// once (two processes of a service after a broker outage) publish each message once: each
    /// claims its batch in the store.
    private func checkTwoRelaysDrainABacklogPublishingEachMessageOnce(store: any SagaStore) async throws {
        let bus = try await makeBus()
        let sagas = 120
        for saga in 0..<sagas {
            let messages = (0..<10).map { index in
                message(alpha.commandsExchange, sagaID: "backlog-\(saga)", age: 60 - Double(index) / 100)
            }
            _ = try await store.create(state("backlog-\(saga)"), outbox: messages)
        }
        let first = try relay(alpha, bus: bus, store: store)
        let second = try relay(alpha, bus: bus, store: store)
        async let one = first.relayOnce(limit: 100)
        async let two = second.relayOnce(limit: 100)
        let (sentByOne, sentByTwo) = try await (one, two)
        #expect(sentByOne + sentByTwo == sagas * 10, "\(sentByOne) + \(sentByTwo)")
        #expect(bus.messageCount(queue: alpha.queue(forService: "inventory")) == sagas * 10, "each message published once")
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10).isEmpty)
    }

    @Test func twoRelaysDrainABacklogPublishingEachMessageOnceInMemory() async throws {
        try await checkTwoRelaysDrainABacklogPublishingEachMessageOnce(store: InMemorySagaStore())
    }

    @Test func twoRelaysDrainABacklogPublishingEachMessageOnceOnSQLite() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-relay-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await SQLiteSagaStore(path: directory.appendingPathComponent("sagas.db").path, logger: quietTestLogger).withRunning {
            store in
            try await checkTwoRelaysDrainABacklogPublishingEachMessageOnce(store: store)
        }
    }

    @Test func theBackoffDoublesUpToItsMaximum() throws {
        let relay = try relay(alpha, bus: InMemoryBus(), store: InMemorySagaStore())
        #expect(relay.backoff(afterAttempts: 1) == .seconds(1))
        #expect(relay.backoff(afterAttempts: 2) == .seconds(2))
        #expect(relay.backoff(afterAttempts: 4) == .seconds(8))
        #expect(relay.backoff(afterAttempts: 40) == .seconds(300))
    }
}
