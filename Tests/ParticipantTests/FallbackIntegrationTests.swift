import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// reserve, then charge (one attempt; fallback "backup.charge" behind a breaker that opens after
/// 2 failures for 60 s), then ship.
private let fallbackOrder = try! SagaBuilder("fallback-order")
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .step(
        "charge", action: "payment.charge", compensation: "payment.refund", options: StepOptions(retry: .none),
        fallback: SagaFallback(action: "backup.charge", breaker: CircuitBreakerPolicy(failureThreshold: 2, openFor: .seconds(60)))
    )
    .step("ship", action: "shipping.ship", options: .pivot)
    .version(2)
    .build()

@Suite(
    "Fallbacks and circuit breakers on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct FallbackIntegrationTests {
    @Test(arguments: StoreKind.allCases)
    func theCircuitOpensForEveryInstanceAndClosesWhenThePrimaryAnswersAgain(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let metrics = TestMetricsBackend.shared  // bootstrapped before any counter is made
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "fb-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let definitions = try SagaDefinitionRegistry([fallbackOrder])
        let gatewayDown = Mutex(true)
        let primaryCalls = Mutex<[String]>([])  // the instance of each call of the primary action

        func payment(_ instance: String) -> SagaHandlerRegistry {
            var registry = SagaHandlerRegistry()
            registry.register("payment.charge") { context in
                primaryCalls.withLock { $0.append(instance) }
                if gatewayDown.withLock({ $0 }) { throw SagaError(.invalidState, "payment gateway unreachable") }
                try await context.completeStep(merging: ["chargedBy": "gateway"])
            }
            registry.register("payment.refund") { try await $0.completeCompensation() }
            return registry
        }
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { try await $0.completeStep() }
        inventory.register("inventory.release") { try await $0.completeCompensation() }
        var backup = SagaHandlerRegistry()
        backup.register("backup.charge") { try await $0.completeStep(merging: ["chargedBy": "backup"]) }
        var shipping = SagaHandlerRegistry()
        shipping.register("shipping.ship") { try await $0.completeStep() }
        // Two instances of the payment service on one queue: each sees the other's failures.
        let services: [(String, SagaHandlerRegistry)] = [
            ("inventory", inventory), ("payment", payment("payment-a")), ("payment", payment("payment-b")), ("backup", backup),
            ("shipping", shipping),
        ]
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        let key = fallbackOrder.circuitKey(ofStep: 1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in services {
                var configuration = ParticipantConfiguration(service: service, topology: topology, outboxPollInterval: .milliseconds(200))
                configuration.prefetch = 1  // so that both payment instances take deliveries
                let participant = SagaParticipant(
                    configuration: configuration, definitions: definitions, handlers: registry, bus: bus, store: store,
                    logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            group.addTask { try await manager.run() }
            func order() async throws -> SagaState {
                let id = try await manager.start("fallback-order", payload: [:])
                return try await manager.outcome(of: id, timeout: .seconds(30))
            }

            // The gateway is down: the first two orders try it, fail, and fall back; the circuit opens.
            for _ in 0..<2 {
                let saga = try await order()
                #expect(saga.status == .completed && saga.payload["chargedBy"] == "backup")
            }
            #expect(primaryCalls.withLock { $0.count } == 2)
            let opened = try await store.circuit(key).state
            #expect(opened.openedAt != nil && opened.failures == 2)
            // Operators see it in the metrics too (both stores' cases share the counter).
            let dimensions = [("saga", "fallback-order"), ("step", "charge")]
            #expect((try? metrics.expectCounter("saga_circuit_opened_total", dimensions).totalValue) ?? 0 >= 1)

            // While it is open, orders go to the backup at once: the gateway is not called.
            let whileOpen = try await order()
            #expect(whileOpen.status == .completed && whileOpen.payload["chargedBy"] == "backup")
            #expect(primaryCalls.withLock { $0.count } == 2)
            #expect(whileOpen.history.first { $0.stepName == "charge" }?.error?.contains("circuit '\(key)' is open until") == true)

            // The gateway is back; once the open interval has passed (the circuit is made to have
            // opened 61 s ago, rather than waiting a minute), the next order tries it and closes
            // the circuit.
            gatewayDown.withLock { $0 = false }
            let stored = try await store.circuit(key)
            let aged = CircuitBreakerState(failures: stored.state.failures, openedAt: Date().addingTimeInterval(-61))
            #expect(try await store.saveCircuit(key, aged, expectedVersion: stored.version))
            let probe = try await order()
            #expect(probe.status == .completed && probe.payload["chargedBy"] == "gateway")
            #expect(try await store.circuit(key).state == .closed)
            #expect((try? metrics.expectCounter("saga_circuit_closed_total", dimensions).totalValue) ?? 0 >= 1)
            print("primary calls by instance: \(primaryCalls.withLock { $0 })")
            group.cancelAll()
        }
        await bus.shutdown()
        await close()
    }
}
