import Foundation
import MetricsTestKit
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// open, then the group "prepare" — reserve (inventory), authorize (payment), gift-wrap
/// (inventory, when gift is true) — then ship, the pivot.
private let parallelOrder = try! SagaBuilder("parallel-order")
    .step("open", action: "orders.open", compensation: "orders.cancel")
    .parallel("prepare") { group in
        group
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("authorize", action: "payment.authorize", compensation: "payment.void", options: StepOptions(retry: .none))
            .step("gift-wrap", action: "inventory.wrap", compensation: "inventory.unwrap", when: .isTrue("gift"))
    }
    .step("ship", action: "shipping.ship", options: .pivot)
    .build()

/// Every handler run: when it started, and when it applied its effect and reported (before
/// anything its report caused).
private final class Timeline: Sendable {
    struct Run: Sendable {
        var command: String
        var sagaID: SagaID
        var started: Date
        var effect: Date
    }
    private let runs = Mutex<[Run]>([])

    /// Runs `body` and records the run (effects apply once: a duplicate of a key is not added).
    func run(_ context: SagaContext, startedAt: Date = Date(), _ body: () async throws -> Void) async throws {
        let started = startedAt
        let run = Run(command: context.command, sagaID: context.sagaID, started: started, effect: Date())
        try await body()
        runs.withLock { $0.append(run) }
    }

    /// Waits until `command` has reported for the saga (at most 20 s).
    func awaitReport(of command: String, for sagaID: SagaID) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while run(command, of: sagaID) == nil {
            guard ContinuousClock.now < deadline else {
                throw TestFailure("\(command) of saga \(sagaID) did not report within 20 s: the members did not run at once")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func commands(of sagaID: SagaID) -> [String] {
        runs.withLock { $0.filter { $0.sagaID == sagaID }.sorted { $0.effect < $1.effect }.map(\.command) }
    }

    func run(_ command: String, of sagaID: SagaID) -> Run? {
        runs.withLock { $0.first { $0.command == command && $0.sagaID == sagaID } }
    }
}

@Suite(
    "Parallel groups on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct ParallelGroupIntegrationTests {
    private static func handlers(_ timeline: Timeline) -> [String: SagaHandlerRegistry] {
        var orders = SagaHandlerRegistry()
        orders.register("orders.open") { context in try await timeline.run(context) { try await context.completeStep() } }
        orders.register("orders.cancel") { context in
            try await timeline.run(context) { try await context.completeCompensation() }
        }
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            // Reports only after the payment has: the members run at once (run one after the
            // other, this would wait in vain), and the payment's answer comes first.
            let started = Date()
            try await timeline.awaitReport(of: "payment.authorize", for: context.sagaID)
            try await timeline.run(context, startedAt: started) { try await context.completeStep(merging: ["reserved": true]) }
        }
        inventory.register("inventory.release") { context in
            try await timeline.run(context) { try await context.completeCompensation() }
        }
        inventory.register("inventory.wrap") { context in
            try await timeline.run(context) { try await context.completeStep(merging: ["wrapped": true]) }
        }
        inventory.register("inventory.unwrap") { context in
            try await timeline.run(context) { try await context.completeCompensation() }
        }
        var payment = SagaHandlerRegistry()
        payment.register("payment.authorize") { context in
            try await timeline.run(context) {
                if context.payload["decline"] == true {
                    try await context.failAndCompensate(reason: "card declined")
                } else {
                    try await context.completeStep(merging: ["authorized": true])
                }
            }
        }
        payment.register("payment.void") { context in try await timeline.run(context) { try await context.completeCompensation() } }
        var shipping = SagaHandlerRegistry()
        shipping.register("shipping.ship") { context in try await timeline.run(context) { try await context.completeStep() } }
        return ["orders": orders, "inventory": inventory, "payment": payment, "shipping": shipping]
    }

    @Test(arguments: StoreKind.allCases, [false, true])
    func membersRunAtOnceJoinAndAreCompensatedWhenOneFails(store kind: StoreKind, inProcess: Bool) async throws {
        let servers = try IntegrationServers.require()
        let metrics = TestMetricsBackend.shared
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "par-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let definitions = try SagaDefinitionRegistry([parallelOrder])
        let timeline = Timeline()
        let handlers = Self.handlers(timeline)
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        for (service, registry) in handlers {
            try await bus.declare(topology.topology(forService: service, commands: registry.commands))
        }
        let payloads: [JSONObject] = [[:], ["decline": true], ["gift": true], ["gift": true, "decline": true]]
        let outcomes = try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in handlers {
                var configuration = ParticipantConfiguration(
                    service: service, topology: topology, outboxPollInterval: .milliseconds(200), outboxGracePeriod: .seconds(30))
                // In process, the inventory runs both of its members of the group without the broker.
                configuration.inProcessSteps = inProcess
                let participant = SagaParticipant(
                    configuration: configuration, definitions: definitions, handlers: registry, bus: bus, store: store,
                    logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            group.addTask { try await manager.run() }
            let ids = try await manager.start("parallel-order", payloads: payloads).map(\.id)
            var outcomes: [SagaState] = []
            for id in ids { outcomes.append(try await manager.outcome(of: id, timeout: .seconds(60))) }
            group.cancelAll()
            return outcomes
        }

        // Every member ran, at once: the payment answered while the reservation still waited.
        let plain = outcomes[0]
        #expect(plain.status == .completed, "\(plain.failureReason ?? "")")
        #expect(timeline.commands(of: plain.id) == ["orders.open", "payment.authorize", "inventory.reserve", "shipping.ship"])
        // (The reservation, declared first, reports only after the payment did: run one after the
        // other, the saga would have stalled there.)
        #expect(plain.payload["reserved"] == true && plain.payload["authorized"] == true)
        #expect(plain.history.first { $0.stepName == "gift-wrap" }?.outcome == .skipped)

        // The payment refused while the reservation ran: the group waited for it, then undid it
        // and the order; the refused authorization is not voided.
        let declined = outcomes[1]
        #expect(declined.status == .compensated)
        #expect(declined.failureReason == "parallel group 'prepare': step 'authorize' failed: card declined")
        #expect(
            timeline.commands(of: declined.id) == [
                "orders.open", "payment.authorize", "inventory.reserve", "inventory.release", "orders.cancel",
            ])

        let gift = outcomes[2]
        #expect(gift.status == .completed)
        #expect(
            Set(timeline.commands(of: gift.id)) == [
                "orders.open", "inventory.reserve", "payment.authorize", "inventory.wrap", "shipping.ship",
            ])
        #expect(gift.payload["wrapped"] == true)

        // Both completed members are undone, in reverse order of their declaration.
        let declinedGift = outcomes[3]
        #expect(declinedGift.status == .compensated)
        #expect(Array(timeline.commands(of: declinedGift.id).suffix(3)) == ["inventory.unwrap", "inventory.release", "orders.cancel"])
        #expect(!timeline.commands(of: declinedGift.id).contains("payment.void"))
        // The failure counts against the member that failed, not the one whose later completion
        // started the compensation (every test case counts, at once: the reservation never).
        func failed(at step: String) throws -> Int64 {
            try metrics.expectCounter("saga_failed_total", [("saga", "parallel-order"), ("step", step)]).totalValue
        }
        #expect(try failed(at: "authorize") >= 2)
        #expect(try failed(at: "reserve") == 0 && failed(at: "gift-wrap") == 0)
        await bus.shutdown()
        await close()
    }
}
