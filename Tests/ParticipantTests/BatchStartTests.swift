import Foundation
import Participant
import SagaTestSupport
import Testing

/// `SagaManager.start(_:payloads:)` (issue 14, item 4): many sagas in one call.
@Suite("Batch starts")
struct BatchStartTests {
    @Test("every saga of a batch is stored once and its first command published once")
    func batchStoresAndPublishesEverySaga() async throws {
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        let manager = SagaManager(definitions: orderDefinitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        let payloads: [JSONObject] = (0..<50).map { ["orderId": .string("b-\($0)"), "amount": 1] }
        let starts = try await manager.start("order", payloads: payloads)

        #expect(starts.count == 50)
        #expect(starts.allSatisfy { if case .success(.started) = $0.result { true } else { false } })
        #expect(Set(starts.map(\.id)).count == 50)
        for (start, payload) in zip(starts, payloads) {
            let state = try await store.load(start.id)
            #expect(state.payload["orderId"] == payload["orderId"], "the saga of each payload, in order")
            #expect(state.status == .running && state.currentStep == 0)
        }
        // One first command per saga on the first step's queue, all marked sent.
        let queue = testTopology.queue(forService: "inventory")
        #expect(bus.messageCount(queue: queue) == 50)
        let unsent = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 1_000)
        #expect(unsent.isEmpty, "published messages are marked sent: \(unsent.map(\.routingKey))")
    }

    @Test("a batch retried with the same ids stores and sends nothing again")
    func batchIsIdempotentByID() async throws {
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        let manager = SagaManager(definitions: orderDefinitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        let ids = (0..<10).map { "batch-\($0)-\(UUID().uuidString.prefix(6))" }
        let payloads: [JSONObject] = ids.map { ["orderId": .string($0), "amount": 1] }
        _ = try await manager.start("order", payloads: Array(payloads.prefix(4)), ids: Array(ids.prefix(4)))
        let again = try await manager.start("order", payloads: payloads, ids: ids)

        #expect(again.map(\.id) == ids)
        #expect(again.prefix(4).allSatisfy { if case .success(.alreadyStarted) = $0.result { true } else { false } })
        #expect(again.suffix(6).allSatisfy { if case .success(.started) = $0.result { true } else { false } })
        #expect(bus.messageCount(queue: testTopology.queue(forService: "inventory")) == 10, "one command per saga, not 14")
    }

    @Test("an id that belongs to a saga of another definition is refused, by one start and in a batch")
    func anIDOfAnotherDefinitionsSagaIsRefused() async throws {
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        var definitions = orderDefinitions
        try definitions.register(try SagaBuilder("refund").step("refund", action: "payment.refund").build())
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        try await bus.declare(testTopology.topology(forService: "payment", commands: ["payment.refund"]))
        let id = try await manager.start("order", payload: ["orderId": "o-42", "amount": 1], id: "o-42")

        // The same definition again: idempotent.
        let again = try await manager.startIfAbsent("order", payload: ["orderId": "o-42", "amount": 1], id: id)
        guard case .alreadyStarted = again else { Issue.record("\(again)"); return }
        // Another definition: refused, saying whose id it is and what to do; nothing stored or sent.
        do {
            _ = try await manager.startAndWait("refund", payload: [:], id: id, timeout: .seconds(1))
            Issue.record("a refund started on the order's id")
        } catch let error as SagaError {
            #expect(error.code == .duplicateSaga)
            #expect("\(error)".contains("saga id 'o-42' belongs to a 'order' saga (running), not to a 'refund' one"), "\(error)")
            #expect(error.recoverySuggestion?.contains("'refund-o-42'") == true, "\(error)")
        }
        let batch = try await manager.start("refund", payloads: [[:], [:]], ids: [id, "r-1"])
        guard case .failure(let error as SagaError) = batch[0].result else { Issue.record("\(batch[0].result)"); return }
        #expect(error.code == .duplicateSaga)
        #expect(batch[1].isStored)
        #expect(try await store.load(id).name == "order")
        #expect(bus.messageCount(queue: testTopology.queue(forService: "payment")) == 1, "only r-1's refund")
    }

    @Test("ids that do not match the payloads are refused before anything is stored")
    func badIDsAreRefused() async throws {
        let store = InMemorySagaStore()
        let manager = SagaManager(
            definitions: orderDefinitions, bus: InMemoryBus(), store: store, topology: testTopology, logger: quietTestLogger)
        let payloads: [JSONObject] = [["orderId": "x", "amount": 1], ["orderId": "y", "amount": 1]]
        await #expect(throws: SagaError.self) { try await manager.start("order", payloads: payloads, ids: ["only-one"]) }
        await #expect(throws: SagaError.self) { try await manager.start("order", payloads: payloads, ids: ["same", "same"]) }
        await #expect(throws: SagaError.self) { try await manager.start("no-such-saga", payloads: payloads) }
        #expect(try await store.list(SagaQuery()).isEmpty)
        #expect(try await manager.start("order", payloads: [JSONObject]()).isEmpty)
    }

    @Test("a saga whose every step is skipped at the start is stored completed and sends no command")
    func everyStepSkippedAtTheStart() async throws {
        let definition = try SagaBuilder("gifts")
            .step("wrap", action: "shop.wrap", when: .isTrue("gift"))
            .step("card", action: "shop.card", when: .all([.isTrue("gift"), .exists("message")]))
            .build()
        let bus = CommandCountingBus(InMemoryBus())
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "skip-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let manager = SagaManager(
            definitions: try SagaDefinitionRegistry([definition]), bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await bus.declare(topology.topology(forService: "shop", commands: ["shop.wrap", "shop.card"]))
        let plain = try await manager.start("gifts", payload: ["gift": false])
        let batch = try await manager.start("gifts", payloads: [["gift": false], ["gift": true]])

        let state = try await store.load(plain)
        #expect(state.status == .completed)
        #expect(state.history.map(\.outcome) == [.skipped, .skipped])
        #expect(try await store.load(batch[0].id).status == .completed)
        #expect(try await store.load(batch[1].id).status == .running, "the first step applies: it runs")
        #expect(bus.commandCounts == ["shop.wrap": 1], "one command, for the saga whose first step applies")
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).isEmpty)
    }

    @Test(
        "a batch of sagas runs to the end on the real broker and store",
        .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
        arguments: StoreKind.allCases)
    func batchRunsEndToEnd(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "batch-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let ledger = Ledger()
        let count = 200
        let finals = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            let payloads: [JSONObject] = (0..<count).map {
                ["orderId": .string("b-\($0)"), "amount": 1, "declinePayment": .bool($0 % 5 == 0)]
            }
            let starts = try await manager.start("order", payloads: payloads)
            #expect(starts.allSatisfy { $0.isStored })
            var finals: [SagaState] = []
            for start in starts { finals.append(try await manager.outcome(of: start.id, timeout: .seconds(60))) }
            return finals
        }
        #expect(finals.filter { $0.status == .completed }.count == count * 4 / 5)
        #expect(finals.filter { $0.status == .compensated }.count == count / 5)
        for saga in finals where saga.status == .completed {
            #expect(ledger.effects(of: saga.id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
        }
        await bus.shutdown()
        await close()
    }
}
