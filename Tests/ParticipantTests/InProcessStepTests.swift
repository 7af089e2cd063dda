import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

/// In-process orchestration (issue 14, item 3): `ParticipantConfiguration.inProcessSteps` runs a
/// saga's next step in the participant that has its handler, without a broker hop; the steps of
/// other services stay remote; a step taken in process and never finished is sent through the
/// broker by the outbox relay.
@Suite("In-process steps")
struct InProcessStepTests {
    /// The order saga's three services' handlers in one registry (or the given subset).
    static func combined(_ registries: [String: SagaHandlerRegistry], services: [String]) -> SagaHandlerRegistry {
        var combined = SagaHandlerRegistry()
        for service in services {
            guard let registry = registries[service] else { continue }
            for command in registry.commands {
                if let handler = registry.handler(for: command) { combined.register(command, handler: handler) }
            }
        }
        return combined
    }

    @Test("one service with every step's handler: only the first command crosses the broker")
    func everyStepInProcess() async throws {
        let bus = CommandCountingBus(InMemoryBus())
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "local-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let ledger = Ledger()
        let handlers = Self.combined(orderHandlers(ledger: ledger), services: ["inventory", "payment", "shipping"])
        let finals = try await run(
            ["orders": (handlers, true)], bus: bus, store: store, topology: topology
        ) { manager in
            var ids: [SagaID] = []
            for index in 0..<20 {
                ids.append(
                    try await manager.start(
                        "order", payload: ["orderId": .string("l-\(index)"), "amount": 1, "declinePayment": .bool(index % 4 == 0)])
                )
            }
            var finals: [SagaState] = []
            for id in ids { finals.append(try await manager.outcome(of: id, timeout: .seconds(20))) }
            return finals
        }
        #expect(finals.filter { $0.status == .completed }.count == 15)
        #expect(finals.filter { $0.status == .compensated }.count == 5)
        for saga in finals {
            let expected: Set<String> =
                saga.status == .completed
                ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
            #expect(ledger.effects(of: saga.id) == expected)
        }
        // 20 first commands from the manager; no other command was published.
        #expect(bus.commands(on: topology.commandsExchange) == 20, "\(bus.commandCounts)")
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).isEmpty, "every in-process command is marked sent")
    }

    @Test("local and remote steps mix: a step of another service still goes through the broker")
    func localAndRemoteSteps() async throws {
        let bus = CommandCountingBus(InMemoryBus())
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "mixed-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let ledger = Ledger()
        let registries = orderHandlers(ledger: ledger)
        let finals = try await run(
            [
                "orders": (Self.combined(registries, services: ["inventory", "payment"]), true),
                "shipping": (registries["shipping"]!, false),
            ], bus: bus, store: store, topology: topology
        ) { manager in
            var ids: [SagaID] = []
            for index in 0..<10 {
                ids.append(try await manager.start("order", payload: ["orderId": .string("m-\(index)"), "amount": 1]))
            }
            var finals: [SagaState] = []
            for id in ids { finals.append(try await manager.outcome(of: id, timeout: .seconds(20))) }
            return finals
        }
        #expect(finals.allSatisfy { $0.status == .completed })
        #expect(bus.commandCounts["inventory.reserve"] == 10, "the first command, from the manager")
        #expect(bus.commandCounts["payment.charge"] == nil, "run in process: \(bus.commandCounts)")
        #expect(bus.commandCounts["shipping.ship"] == 10, "another service's step: through the broker")
    }

    @Test("a step taken in process that never finishes is sent through the broker by the outbox relay")
    func stuckInProcessStepIsRelayed() async throws {
        let bus = CommandCountingBus(InMemoryBus())
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "stuck-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let ledger = Ledger()
        let registries = orderHandlers(ledger: ledger)
        // Instance A runs steps in process; its payment handler hangs (a process that froze or
        // died after taking the step). Instance B is an ordinary participant of the same service.
        let gate = Gate()
        let calls = CallCount()
        // How often the broker had carried the command when the in-process run began.
        let publishedBeforeFirstRun = Mutex<Int?>(nil)
        var hanging = Self.combined(registries, services: ["inventory", "shipping"])
        let charge = registries["payment"]!.handler(for: "payment.charge")!
        hanging.register("payment.charge") { context in
            // The first run (the in-process one) hangs; a redelivery to A runs normally.
            if calls.next() == 1 {
                publishedBeforeFirstRun.withLock { $0 = bus.commandCounts["payment.charge"] ?? 0 }
                await gate.wait()
                try await context.completeStep()
            } else {
                try await charge(context)
            }
        }
        let ordinary = Self.combined(registries, services: ["inventory", "payment", "shipping"])
        let final = try await run(
            ["orders": (hanging, true)], bus: bus, store: store, topology: topology, grace: .milliseconds(300)
        ) { manager in
            let id = try await manager.start("order", payload: ["orderId": "s-1", "amount": 1])
            try await waitUntil { gate.waiting }
            // (Read when the run began: on a loaded machine A's own relay may publish the stuck
            // command before this line runs, 300 ms after it was committed.)
            #expect(publishedBeforeFirstRun.withLock { $0 } == 0, "taken in process")
            // B starts: its relay finds the step's command unsent (older than the grace period).
            let final = try await run(
                ["orders": (ordinary, false)], bus: bus, store: store, topology: topology, declare: false, grace: .milliseconds(300)
            ) { _ in
                try await manager.outcome(of: id, timeout: .seconds(20))
            }
            // A's handler ends now; its outcome comes too late and is discarded.
            gate.open()
            return final
        }
        #expect(final.status == .completed)
        #expect((bus.commandCounts["payment.charge"] ?? 0) >= 1, "published by an outbox relay")
        #expect(ledger.effects(of: final.id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
    }

    @Test(
        "local and remote steps on the real broker and store",
        .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
        arguments: StoreKind.allCases)
    func localAndRemoteStepsOnTheRealBroker(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let (store, close) = try await openStore(kind.url(postgres: servers.postgres))
        let rabbit = try await RabbitMQBus.connect(url: servers.amqp)
        let bus = CommandCountingBus(rabbit)
        let topology = SagaTopology(prefix: "inproc-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let ledger = Ledger()
        let registries = orderHandlers(ledger: ledger)
        let finals = try await run(
            [
                "orders": (Self.combined(registries, services: ["inventory", "payment"]), true),
                "shipping": (registries["shipping"]!, false),
            ], bus: bus, store: store, topology: topology, prefetch: 64  // more than the sagas: none overflows to the broker
        ) { manager in
            let payloads: [JSONObject] = (0..<40).map {
                [
                    "orderId": .string("r-\($0)"), "amount": 1, "declinePayment": .bool($0 % 4 == 0),
                    "failShippingTimes": $0 % 10 == 1 ? 1 : 0,
                ]
            }
            let starts = try await manager.start("order", payloads: payloads)
            var finals: [SagaState] = []
            for start in starts { finals.append(try await manager.outcome(of: start.id, timeout: .seconds(60))) }
            return finals
        }
        #expect(finals.filter { $0.status == .completed }.count == 30)
        #expect(finals.filter { $0.status == .compensated }.count == 10)
        for saga in finals {
            let expected: Set<String> =
                saga.status == .completed
                ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
            #expect(ledger.effects(of: saga.id) == expected)
        }
        #expect(bus.commandCounts["payment.charge"] == nil, "in process: \(bus.commandCounts)")
        #expect(bus.commandCounts["inventory.release"] == nil, "compensations in process too: \(bus.commandCounts)")
        #expect((bus.commandCounts["shipping.ship"] ?? 0) >= 30, "remote, and retried through the delay queues")
        await rabbit.shutdown()
        await close()
    }

    /// Runs one participant per entry (handlers, in-process steps?) on `bus` while `body` runs.
    /// The outbox relay's grace period is long by default (30 s), so that on a loaded machine no
    /// in-process step is also published by a relay (the documented behaviour for a step that
    /// runs longer than the grace period) and the command counts are exact.
    private func run<T: Sendable>(
        _ services: [String: (SagaHandlerRegistry, Bool)], bus: any MessageBus, store: any SagaStore, topology: SagaTopology,
        declare: Bool = true, grace: Duration = .seconds(30), prefetch: Int = 16, body: @Sendable (SagaManager) async throws -> T
    ) async throws -> T {
        let manager = SagaManager(definitions: orderDefinitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        if declare {
            try await manager.declareTopology()
            for (service, (registry, _)) in services {
                try await bus.declare(topology.topology(forService: service, commands: registry.commands))
            }
        }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for (service, (registry, inProcess)) in services {
                let participant = SagaParticipant(
                    configuration: ParticipantConfiguration(
                        service: service, topology: topology, prefetch: prefetch, outboxPollInterval: .milliseconds(100),
                        outboxGracePeriod: grace, reaper: nil, inProcessSteps: inProcess),
                    definitions: orderDefinitions, handlers: registry, bus: bus, store: store, logger: quietTestLogger)
                group.addTask { try await participant.run() }
            }
            let result = try await body(manager)
            group.cancelAll()
            return result
        }
    }
}

/// A bus that counts the commands published to each routing key.
final class CommandCountingBus: MessageBus {
    let base: any MessageBus
    private let counts = Mutex<[String: [String: Int]]>([:])

    init(_ base: any MessageBus) { self.base = base }

    /// Commands published per routing key (any exchange but the events one).
    var commandCounts: [String: Int] {
        counts.withLock { counts in
            counts.filter { !$0.key.hasSuffix(".events") }.values.reduce(into: [:]) { $0.merge($1, uniquingKeysWith: +) }
        }
    }

    /// Messages published to one exchange.
    func commands(on exchange: String) -> Int {
        counts.withLock { $0[exchange]?.values.reduce(0, +) ?? 0 }
    }

    func declare(_ topology: Topology) async throws { try await base.declare(topology) }

    func publish(_ message: OutgoingMessage) async throws {
        try await base.publish(message)
        counts.withLock { $0[message.exchange, default: [:]][message.routingKey, default: 0] += 1 }
    }

    func consume(queue: String, prefetch: Int) async throws -> DeliveryStream { try await base.consume(queue: queue, prefetch: prefetch) }

    func shutdown() async { await base.shutdown() }
}

/// Holds handlers until opened.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    var waiting: Bool { state.withLock { !$0.waiters.isEmpty } }

    var isOpen: Bool { state.withLock { $0.open } }

    func wait() async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Counts calls: 1 for the first.
final class CallCount: Sendable {
    private let count = Mutex(0)

    func next() -> Int {
        count.withLock { count in
            count += 1
            return count
        }
    }
}
