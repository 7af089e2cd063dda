import Foundation
import Participant
import SagaTestSupport
import Testing

/// vip-welcome (when vip is true), reserve, fraud-review (when amount > 1000), charge.
private let conditionalOrder = try! SagaBuilder("conditional-order")
    .step("vip-welcome", action: "crm.welcome", when: .isTrue("vip"))
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .step("fraud-review", action: "fraud.review", compensation: "fraud.forget", when: .greaterThan("amount", 1000))
    .step("charge", action: "payment.charge", options: StepOptions(retry: .none))
    .build()

@Suite(
    "Conditional steps on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct ConditionalStepIntegrationTests {
    private static func handlers(ledger: Ledger) -> [String: SagaHandlerRegistry] {
        var crm = SagaHandlerRegistry()
        crm.register("crm.welcome") { context in
            ledger.record(context)
            try await context.completeStep()
        }
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            ledger.record(context)
            try await context.completeStep()
        }
        inventory.register("inventory.release") { context in
            ledger.record(context)
            try await context.completeCompensation()
        }
        var fraud = SagaHandlerRegistry()
        fraud.register("fraud.review") { context in
            ledger.record(context)
            try await context.completeStep(merging: ["reviewed": true])
        }
        fraud.register("fraud.forget") { context in
            ledger.record(context)
            try await context.completeCompensation()
        }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { context in
            if context.payload["decline"] == true {
                try await context.failAndCompensate(reason: "card declined")
                return
            }
            ledger.record(context)
            try await context.completeStep()
        }
        return ["crm": crm, "inventory": inventory, "fraud": fraud, "payment": payment]
    }

    @Test(arguments: StoreKind.allCases)
    func aConditionalStepRunsForOnePayloadAndIsSkippedForAnother(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "cond-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let definitions = try SagaDefinitionRegistry([conditionalOrder])
        let ledger = Ledger()
        let handlers = Self.handlers(ledger: ledger)
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        for (service, registry) in handlers {
            try await bus.declare(topology.topology(forService: service, commands: registry.commands))
        }
        let payloads: [JSONObject] = [
            ["amount": 50],  // review skipped
            ["amount": 5000],  // review runs
            ["amount": 50, "decline": true],  // review skipped, so not compensated
            ["amount": 5000, "decline": true, "vip": true],  // everything runs, review compensated
        ]
        let outcomes = try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in handlers {
                let participant = SagaParticipant(
                    configuration: ParticipantConfiguration(
                        service: service, topology: topology, outboxPollInterval: .milliseconds(200),
                        outboxGracePeriod: .milliseconds(500)),
                    definitions: definitions, handlers: registry, bus: bus, store: store, logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            var outcomes: [SagaState] = []
            for payload in payloads {
                let id = try await manager.start("conditional-order", payload: payload)
                outcomes.append(try await manager.outcome(of: id, timeout: .seconds(60)))
            }
            group.cancelAll()
            return outcomes
        }

        // Skipped at the start (no vip) and in the middle (a small amount).
        let small = outcomes[0]
        #expect(small.status == .completed)
        #expect(ledger.effects(of: small.id) == ["inventory.reserve", "payment.charge"])
        #expect(small.history.map(\.stepName) == ["vip-welcome", "reserve", "fraud-review", "charge"])
        #expect(small.history.map(\.outcome) == [.skipped, .completed, .skipped, .completed])
        #expect(small.history[2].reason == "condition not met: amount > 1000")

        let large = outcomes[1]
        #expect(large.status == .completed)
        #expect(ledger.effects(of: large.id) == ["inventory.reserve", "fraud.review", "payment.charge"])
        #expect(large.payload["reviewed"] == true)

        let declinedSmall = outcomes[2]
        #expect(declinedSmall.status == .compensated)
        #expect(ledger.effects(of: declinedSmall.id) == ["inventory.reserve", "inventory.release"])

        let declinedLarge = outcomes[3]
        #expect(declinedLarge.status == .compensated)
        #expect(
            ledger.effects(of: declinedLarge.id) == [
                "crm.welcome", "inventory.reserve", "fraud.review", "fraud.forget", "inventory.release",
            ])

        // The `saga` CLI (which reads the definition from the store) shows the skip and the
        // condition.
        let cli = SagaCLI(store: storeURL, amqp: servers.amqp, prefix: topology.prefix)
        let shown = try await cli.succeed(["show", small.id])
        #expect(shown.contains("skipped      condition not met: amount > 1000"), "\(shown)")
        #expect(shown.contains("skipped      condition not met: vip is true"), "\(shown)")
        let graph = try await cli.succeed(["graph", "conditional-order"])
        #expect(graph.contains("when amount #62; 1000") && graph.contains("fraud.forget<br/>if it ran"), "\(graph)")
        #expect(graph.contains("a2 -.->|condition false: skipped| a3"), "\(graph)")
        let graphJSON = try await cli.json(["graph", "conditional-order"]) as? [String: Any]
        let steps = try #require(graphJSON?["steps"] as? [[String: Any]])
        #expect(steps.map { $0["condition"] as? String } == ["vip is true", nil, "amount > 1000", nil])
        print("saga show of a saga with skipped steps:\n\(shown)\nsaga graph:\n\(graph)")
        await bus.shutdown()
        await close()
    }
}
