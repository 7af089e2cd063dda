import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// reserve, then a wait for "approved" (2 s, compensated on timeout), then charge.
private let approvalOrder = try! SagaBuilder("approval-order")
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .wait("approval", for: "approved", timeout: .seconds(2))
    .step("charge", action: "payment.charge")
    .build()

/// The same with a wait of a minute: an operator's `saga signal` runs (a process of its own,
/// seconds on a loaded machine) while the saga still waits.
private let approvalOrderForOperators = try! SagaBuilder("approval-order-ops")
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .wait("approval", for: "approved", timeout: .seconds(60))
    .step("charge", action: "payment.charge")
    .build()

@Suite(
    "Wait steps and signals on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct WaitStepIntegrationTests {
    @Test(arguments: StoreKind.allCases)
    func aSignalMovesTheSagaOnTheTimeoutCompensatesItAndLateSignalsAreIgnored(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "wait-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let definitions = try SagaDefinitionRegistry([approvalOrder, approvalOrderForOperators])
        let ledger = Ledger()
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            // Slow enough that a signal sent right after the start arrives before the wait.
            if context.payload["slow"] == true { try await Task.sleep(for: .milliseconds(800)) }
            ledger.record(context)
            try await context.completeStep()
        }
        inventory.register("inventory.release") { context in
            ledger.record(context)
            try await context.completeCompensation()
        }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { context in
            ledger.record(context)
            try await context.completeStep(merging: ["charged": true])
        }
        let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        let cli = SagaCLI(store: storeURL, amqp: servers.amqp, prefix: topology.prefix)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, registry) in ["inventory": inventory, "payment": payment] {
                let participant = SagaParticipant(
                    configuration: ParticipantConfiguration(
                        service: service, topology: topology, outboxPollInterval: .milliseconds(200),
                        // The reaper ends expired waits at its next pass.
                        reaper: ReaperConfiguration(pollInterval: .milliseconds(500), stalledThreshold: .seconds(60))),
                    definitions: definitions, handlers: registry, bus: bus, store: store, logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            group.addTask { try await manager.run() }

            // Signalled by a service (the manager) while waiting: the saga goes on.
            let approved = try await manager.start("approval-order", payload: ["amount": 10])
            try await Self.waitUntilWaiting(approved, store: store)
            let delivered = try await manager.signal(approved, name: "approved", payload: ["approvedBy": "alice"], by: "risk-ui")
            guard case .delivered = delivered else { throw TestFailure("the signal was not delivered: \(delivered)") }
            let done = try await manager.outcome(of: approved, timeout: .seconds(30))
            #expect(done.status == .completed && done.payload["approvedBy"] == "alice" && done.payload["charged"] == true)
            #expect(done.history.first { $0.stepName == "approval" }?.actor == "risk-ui")

            // Signalled before the saga reached the wait: kept, and the saga does not stop there.
            let early = try await manager.start("approval-order", payload: ["slow": true])
            guard case .delivered = try await manager.signal(early, name: "approved") else { throw TestFailure("early signal lost") }
            #expect(try await manager.outcome(of: early, timeout: .seconds(30)).status == .completed)

            // No signal: after 2 s the reaper compensates; a late signal is ignored and says why.
            let abandoned = try await manager.start("approval-order", payload: [:])
            let timedOut = try await manager.outcome(of: abandoned, timeout: .seconds(30))
            #expect(timedOut.status == .compensated)
            #expect(timedOut.failureReason == "step 'approval': no signal 'approved' within 2 s")
            #expect(ledger.effects(of: abandoned) == ["inventory.reserve", "inventory.release"])
            guard case .ignored(let reason, _) = try await manager.signal(abandoned, name: "approved") else {
                throw TestFailure("a late signal was delivered")
            }
            #expect(reason.contains("came too late"))

            // From the CLI: `saga signal`, with a clear error for a signal the saga does not wait for.
            let byCLI = try await manager.start("approval-order-ops", payload: [:])
            try await Self.waitUntilWaiting(byCLI, store: store)
            let wrong = try await cli.run(["signal", byCLI, "aproved"])
            #expect(wrong.status != 0 && wrong.stderr.contains("waits for no signal named 'aproved' (its signals: approved)"), "\(wrong)")
            let badData = try await cli.run(["signal", byCLI, "approved", "--data", "[1]"])
            #expect(badData.status != 0 && badData.stderr.contains("--data is not a JSON object"), "\(badData)")
            // Text that is not JSON: where it stops being JSON.
            let broken = try await cli.run(["signal", byCLI, "approved", "--data", "[1,2"])
            #expect(broken.status != 0 && broken.stderr.contains("at byte 4"), "\(broken)")
            let output = try await cli.succeed(["signal", byCLI, "approved", "--data", #"{"ticket": 42}"#, "--by", "bob"])
            #expect(output.contains("signal 'approved' delivered to saga \(byCLI) by bob"), "\(output)")
            let viaCLI = try await manager.outcome(of: byCLI, timeout: .seconds(30))
            #expect(viaCLI.status == .completed && viaCLI.payload["ticket"] == 42)
            let again = try await cli.run(["signal", byCLI, "approved"])
            #expect(again.status != 0 && again.stderr.contains("ignored"), "\(again)")
            // Several sagas at once, ids from standard input: each signalled, the one past its
            // wait reported, exit status 1.
            let first = try await manager.start("approval-order-ops", payload: [:])
            let second = try await manager.start("approval-order-ops", payload: [:])
            try await Self.waitUntilWaiting(first, store: store)
            try await Self.waitUntilWaiting(second, store: store)
            let piped = try await cli.run(["signal", "-", "approved", "--by", "carol"], input: "\(first)\n\(byCLI)\n\(second)\n")
            #expect(piped.status == 1, "\(piped)")
            #expect(
                piped.stdout.contains("delivered to saga \(first) by carol")
                    && piped.stdout.contains("delivered to saga \(second) by carol"), "\(piped)")
            #expect(piped.stderr.contains("saga \(byCLI): signal 'approved' ignored") && piped.stderr.contains("1 of 3 failed"), "\(piped)")
            #expect(try await manager.outcome(of: first, timeout: .seconds(30)).status == .completed)
            #expect(try await manager.outcome(of: second, timeout: .seconds(30)).status == .completed)
            group.cancelAll()
        }
        await bus.shutdown()
        await close()
    }

    /// Waits until the saga is stored as waiting (at most 20 s).
    private static func waitUntilWaiting(_ id: SagaID, store: any SagaStore) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if try await store.load(id).status == .waiting { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("saga \(id) never reached its wait: \(try await store.load(id).status)")
    }
}
