import Foundation
import SagaTestSupport
import Synchronization
import Testing

@testable import Participant

@Suite(
    "Saga lifecycle events on RabbitMQ",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct LifecycleEventTests {
    /// Every saga's events arrive on a subscriber's queue, in saga-version order once sorted, with
    /// the kinds its path implies; a manager run as a service is woken by them.
    @Test(arguments: StoreKind.allCases)
    func eachSagaPublishesItsLifecycleAndWakesTheManager(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let topology = SagaTopology(prefix: "ev-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let watcherBus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = Ledger()
        // Another service's view: every event of the `order` definition.
        let subscription = try await SagaEventSubscription.subscribe(bus: watcherBus, topology: topology, bindingKeys: ["order.#"])
        let count = 12
        let outcomes = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) {
            manager in
            // Reads the store only every 5 minutes unless an event wakes it: the outcomes below
            // can only come back before their 120 s timeout when the events arrive.
            var manager = manager
            manager.fallbackInterval = .seconds(300)
            let listening = manager
            return try await withThrowingTaskGroup(of: [SagaState].self) { group in
                group.addTask {
                    try await listening.run()
                    return []
                }
                try await Self.waitUntilListening(listening)
                let started = ContinuousClock.now
                let outcomes = try await withThrowingTaskGroup(of: SagaState.self) { sagas in
                    for index in 0..<count {
                        sagas.addTask {
                            let id = try await listening.start(
                                "order", payload: ["orderId": .string("ev-\(index)"), "amount": 5, "declinePayment": .bool(index % 3 == 0)])
                            return try await listening.outcome(of: id, timeout: .seconds(120))
                        }
                    }
                    return try await sagas.reduce(into: []) { $0.append($1) }
                }
                // Without the events, a saga is seen only when its wait reaches the 120 s timeout
                // (the store is read then): under 100 s they were woken. The sagas themselves take
                // about a second alone and up to 29 s on a loaded machine (the whole suite on 2
                // cores), which a bound under a 30 s fallback did not leave room for.
                #expect(ContinuousClock.now - started < .seconds(100), "outcome(of:) was not woken by the events")
                group.cancelAll()
                return outcomes
            }
        }
        #expect(outcomes.filter { $0.status == .completed }.count == count - count / 3)
        #expect(outcomes.filter { $0.status == .compensated }.count == count / 3)

        // Collect until every saga's terminal event is in.
        var bySaga: [SagaID: [SagaLifecycleEvent]] = [:]
        var iterator = subscription.makeAsyncIterator()
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while bySaga.values.filter({ $0.contains { $0.kind.isTerminal } }).count < count, ContinuousClock.now < deadline {
            guard let event = try await iterator.next() else { break }
            // At least once: the outbox relay may publish an event again (same id) under load.
            if bySaga[event.sagaID]?.contains(where: { $0.id == event.id }) == true { continue }
            bySaga[event.sagaID, default: []].append(event)
        }
        for saga in outcomes {
            let events = (bySaga[saga.id] ?? []).sorted { ($0.sagaVersion, $0.kind.rawValue) < ($1.sagaVersion, $1.kind.rawValue) }
            let kinds = Set(events.map(\.kind))
            if saga.status == .completed {
                #expect(events.map(\.kind).filter { $0 == .stepCompleted }.count == 3, "saga \(saga.id)")
                #expect(kinds == [.started, .stepCompleted, .completed], "saga \(saga.id)")
            } else {
                #expect(
                    kinds == [.started, .stepCompleted, .stepFailed, .compensationStarted, .compensationStepCompleted, .compensated],
                    "saga \(saga.id)")
                #expect(events.first { $0.kind == .stepFailed }?.error == "card declined")
            }
            #expect(events.first?.kind == .started)
            #expect(events.allSatisfy { $0.definitionVersion == 1 && $0.sagaName == "order" })
            // The last event carries the saga's final version.
            #expect(events.last?.sagaVersion == saga.version, "saga \(saga.id)")
        }
        await watcherBus.shutdown()
        await bus.shutdown()
        await close()
    }

    /// `startAndWait` returns each saga's terminal event as soon as it arrives (the store is read
    /// only every 5 minutes here), the same event the saga's stored end makes, whether every event is
    /// published or only the terminal ones; a manager that is not run gets the same answer from
    /// the store.
    @Test(arguments: [SagaLifecycleEvent.Selection.all, .terminal])
    func startAndWaitReturnsEachSagasTerminalEvent(events: SagaLifecycleEvent.Selection) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(servers.postgres)
        let topology = SagaTopology(prefix: "end-\(UUID().uuidString.prefix(8))", delayLevels: [1], events: events)
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let count = 9
        let (endings, unrun) = try await withParticipants(
            orderHandlers(ledger: Ledger()), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            var listening = manager
            listening.fallbackInterval = .seconds(300)
            let running = listening
            return try await withThrowingTaskGroup(of: ([SagaLifecycleEvent], SagaLifecycleEvent?).self) { group in
                group.addTask {
                    try await running.run()
                    return ([], nil)
                }
                try await Self.waitUntilListening(running)
                let started = ContinuousClock.now
                let endings = try await withThrowingTaskGroup(of: SagaLifecycleEvent.self) { sagas in
                    for index in 0..<count {
                        sagas.addTask {
                            try await running.startAndWait(
                                "order",
                                payload: ["orderId": .string("end-\(index)"), "amount": 5, "declinePayment": .bool(index % 3 == 0)],
                                timeout: .seconds(120))
                        }
                    }
                    return try await sagas.reduce(into: []) { $0.append($1) }
                }
                #expect(ContinuousClock.now - started < .seconds(100), "startAndWait was not woken by the events")
                // Another manager, not run: it reads the store every 50 ms.
                let unrun = try await manager.startAndWait(
                    "order", payload: ["orderId": "end-unrun", "amount": 5, "declinePayment": true], timeout: .seconds(60))
                #expect(running.hub.waitedForCount == 0)
                group.cancelAll()
                return (endings, unrun)
            }
        }
        #expect(endings.count { $0.kind == .completed } == count - count / 3)
        #expect(endings.count { $0.kind == .compensated && $0.error?.contains("card declined") == true } == count / 3)
        for ending in endings + [unrun] {
            let stored = try await store.load(ending.sagaID)
            #expect(ending == SagaLifecycleEvent.ending(of: stored), "saga \(ending.sagaID)")
        }
        #expect(unrun.kind == .compensated)
        await bus.shutdown()
        await close()
    }

    private static func waitUntilListening(_ manager: SagaManager) async throws {
        for _ in 0..<200 {
            if manager.isListeningForEvents { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw TestFailure("the manager did not start listening for events")
    }
}
