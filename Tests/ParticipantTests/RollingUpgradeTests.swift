import Foundation
import InMemoryLogging
import Logging
import MetricsTestKit
import SagaTestSupport
import Synchronization
import Testing

@testable import Participant

/// A rolling upgrade with sagas in flight, on the real broker, with SQLite (one file that both
/// releases open) and PostgreSQL.
///
/// `trip` version 1 is hotel → flight → pay. Version 2 adds a step to an existing service
/// (`seat`, a new command of `flights`) and a step in a new service (`insure`, `insurance`).
/// Release 1 (built with v1) runs alone and starts v1 sagas; release 2 (built with v2 only) comes
/// up beside it on the same queues and starts v2 sagas while both releases start and run sagas;
/// release 2's `flights` instance comes last, so that for a while only release 1 consumes the
/// queue that v2's new `flights.seat` is routed to. Then release 1 stops, with v1 sagas in flight.
@Suite(
    "Rolling upgrade: v1 and v2 of a definition side by side on the real broker",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(5))
)
struct RollingUpgradeTests {
    @Test(arguments: StoreKind.allCases)
    func v1SagasFinishOnV1AndV2SagasOnV2WhileBothReleasesShareTheQueues(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let tag = UUID().uuidString.prefix(8).lowercased()
        // A name of its own: the PostgreSQL database (and its stored definitions) is shared.
        let trip = Trip(name: "trip-\(tag)")
        let topology = SagaTopology(prefix: "ru-\(tag)", delayLevels: [1])
        let ledger = UpgradeLedger()
        let url = kind.url(postgres: servers.postgres)
        // Each release opens the store itself: for SQLite, the same file.
        let (store1, close1) = try await openStore(url)
        let (store2, close2) = try await openStore(url)

        // Release 1: built with v1 only; it starts v1 sagas.
        let release1 = try Release(number: 1, definitions: [trip.v1], services: Trip.servicesV1, ledger: ledger)
        let bus1 = try await RabbitMQBus.connect(url: servers.amqp)
        let manager1 = SagaManager(definitions: release1.definitions, bus: bus1, store: store1, topology: topology, logger: quietTestLogger)
        try await manager1.declareTopology()
        for (service, registry) in release1.handlers {
            try await bus1.declare(topology.topology(forService: service, commands: registry.commands))
        }
        // Release 1's flights instance counts the commands it hands back.
        let flights1 = CountingBus(try await RabbitMQBus.connect(url: servers.amqp))
        let deployment1 = try await Deployment.start(
            release1, store: store1, topology: topology, amqp: servers.amqp, buses: ["flights": flights1])

        var v1: [SagaID] = []
        var v2: [SagaID] = []
        var deployment2: Deployment?
        var flights2: Deployment?
        var bus2: RabbitMQBus?
        do {
            // Wave A: v1 sagas, release 1 alone.
            for index in 0..<15 { v1.append(try await manager1.start(trip.name, payload: Trip.payload(index))) }

            // Release 2 (built with v2 only: v1 sagas it meets are resolved from the store) comes up
            // beside release 1, except its flights instance. Its topology is declared first, as its
            // instances do when they start: flights.seat is now routed to the flights queue, which
            // only release 1 consumes for a while.
            let release2 = try Release(number: 2, definitions: [trip.v2], services: Trip.servicesV2, ledger: ledger)
            let connection2 = try await RabbitMQBus.connect(url: servers.amqp)
            bus2 = connection2
            let manager2 = SagaManager(
                definitions: release2.definitions, bus: connection2, store: store2, topology: topology, logger: quietTestLogger)
            try await manager2.declareTopology()
            for (service, registry) in release2.handlers {
                try await connection2.declare(topology.topology(forService: service, commands: registry.commands))
            }
            deployment2 = try await Deployment.start(
                release2.without("flights"), store: store2, topology: topology, amqp: servers.amqp)

            // Wave B: both releases start sagas, each on its own version.
            for index in 0..<25 {
                v1.append(try await manager1.start(trip.name, payload: Trip.payload(15 + index)))
                v2.append(try await manager2.start(trip.name, payload: Trip.payload(index)))
                try await Task.sleep(for: .milliseconds(100))
            }
            // Release 1's flights instance met v2's new command and handed it back, since only it
            // consumed the flights queue so far.
            #expect(flights1.handedBack > 0, "no flights.seat reached release 1's flights instance")

            // Release 2's flights instance comes up; both releases keep starting sagas.
            flights2 = try await Deployment.start(
                release2.only("flights"), store: store2, topology: topology, amqp: servers.amqp)
            for index in 25..<35 {
                try await Task.sleep(for: .milliseconds(100))
                v1.append(try await manager1.start(trip.name, payload: Trip.payload(15 + index)))
                v2.append(try await manager2.start(trip.name, payload: Trip.payload(index)))
            }

            // Release 1 stops (gracefully: its running handlers finish) right after starting its
            // last sagas, which are still in flight: release 2 finishes them on v1.
            let stopping = ContinuousClock.now
            try await deployment1.stop()
            await bus1.shutdown()

            // Release 2 alone.
            for index in 35..<45 {
                v2.append(try await manager2.start(trip.name, payload: Trip.payload(index)))
                try await Task.sleep(for: .milliseconds(50))
            }
            let finals = try await terminalStates(of: v1 + v2, in: store2, timeout: .seconds(120))

            for id in v1 {
                let saga = try #require(finals[id])
                #expect(saga.definitionVersion == 1, "saga \(id)")
                let declined = Trip.declines(saga.payload)
                #expect(saga.status == (declined ? .compensated : .completed), "v1 saga \(id): \(saga.failureReason ?? "")")
                #expect(Trip.history(saga) == Trip.expectedHistory(version: 1, declined: declined), "v1 saga \(id)")
                #expect(ledger.effects(of: id) == Trip.expectedEffects(version: 1, declined: declined), "v1 saga \(id)")
            }
            for id in v2 {
                let saga = try #require(finals[id])
                #expect(saga.definitionVersion == 2, "saga \(id)")
                let declined = Trip.declines(saga.payload)
                #expect(saga.status == (declined ? .compensated : .completed), "v2 saga \(id): \(saga.failureReason ?? "")")
                #expect(Trip.history(saga) == Trip.expectedHistory(version: 2, declined: declined), "v2 saga \(id)")
                #expect(ledger.effects(of: id) == Trip.expectedEffects(version: 2, declined: declined), "v2 saga \(id)")
            }
            // Each release ran sagas of the other's version: release 1 the steps of v2 sagas it
            // has handlers for (v2 read from the store), release 2 the v1 sagas release 1 left in
            // flight (v1 read from the store).
            #expect(ledger.calls(release: 1, version: 2) > 0)
            #expect(ledger.calls(release: 2, version: 1, after: stopping) > 0, "no v1 saga was in flight when release 1 stopped")
            // Only release 2 ran v2's new commands.
            #expect(ledger.calls(release: 1, commands: ["flights.seat", "flights.unseat", "insurance.cover", "insurance.cancel"]) == 0)
            // The store keeps both versions.
            let stored = try await store2.definitions().filter { $0.name == trip.name }.map(\.version).sorted()
            #expect(stored == [1, 2])
            // Nothing was dead-lettered.
            let letters = try await drain(queue: topology.deadLetterQueue, bus: connection2, for: .seconds(1))
            #expect(letters.isEmpty, "dead letters: \(letters.map { $0.headers[SagaHeaders.deadLetterReason] ?? "?" })")

            try await flights2?.stop()
            try await deployment2?.stop()
            await connection2.shutdown()
        } catch {
            try? await deployment1.stop()
            try? await flights2?.stop()
            try? await deployment2?.stop()
            await bus1.shutdown()
            await bus2?.shutdown()
            await close1()
            await close2()
            throw error
        }
        await close1()
        await close2()
    }

    /// A command of the saga's version without a handler here is handed back again and again, but
    /// not for ever; a command no version of the saga sends is dead-lettered at once.
    @Test func aCommandNoReleaseTakesIsHandedBackUntilTheLimitAndAnUnknownOneDeadLetteredAtOnce() async throws {
        let servers = try IntegrationServers.require()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let trip = Trip(name: "trip-\(tag)")
        let topology = SagaTopology(prefix: "ru-\(tag)", delayLevels: [1])
        let (store, close) = try await openStore(StoreKind.sqlite.url(postgres: servers.postgres))
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let ledger = UpgradeLedger()
        let flights = CountingBus(try await RabbitMQBus.connect(url: servers.amqp))
        let metrics = TestMetricsBackend.shared
        // Copies of an in-memory handler share its entries.
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .debug
            return handler
        }()
        var deployment: Deployment?
        do {
            // A v2 saga at its new step `seat`; only release 1 (no handler for flights.seat) runs.
            try await store.register(trip.v2)
            let (started, _) = SagaStateMachine(definition: trip.v2).start(
                id: "seat-\(tag)", payload: Trip.payload(1),
                context: [SagaTopology.contextKey: topology.prefix, SagaState.definitionVersionKey: "2"], now: Date())
            var atSeat = started
            atSeat.currentStep = 2
            _ = try await store.create(atSeat, outbox: [])
            let release1 = try Release(number: 1, definitions: [trip.v1], services: Trip.servicesV1, ledger: ledger)
            let manager = SagaManager(
                definitions: release1.definitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
            try await manager.declareTopology()
            try await bus.declare(topology.topology(forService: "flights", commands: Trip.servicesV2["flights"]!))
            deployment = try await Deployment.start(
                release1.only("flights"), store: store, topology: topology, amqp: servers.amqp, buses: ["flights": flights],
                logger: Logger(label: "flights", factory: { _ in logs }))

            // Fresh: handed back, again and again, while no instance with the handler runs.
            let seat = SagaCommand(
                sagaID: atSeat.id, sagaName: trip.name, command: "flights.seat", step: 2, stepName: "seat", phase: .action, attempt: 1)
            try await bus.publish(
                OutgoingMessage(
                    exchange: topology.commandsExchange, routingKey: "flights.seat", body: Array(try JSONCoding.encode(seat)),
                    contentType: SagaHeaders.contentType))
            // Handed back for longer than the limit already.
            let since = Date().addingTimeInterval(-601).timeIntervalSince1970
            try await bus.publish(
                OutgoingMessage(
                    exchange: topology.commandsExchange, routingKey: "flights.seat", body: Array(try JSONCoding.encode(seat)),
                    headers: [SagaHeaders.handedBack: .string("37"), SagaHeaders.handedBackSince: .string(String(since))],
                    contentType: SagaHeaders.contentType))
            // The same, after an instance of another release could not decode its payload: the
            // dead letter names that cause, though this instance, the last, has no handler.
            try await bus.publish(
                OutgoingMessage(
                    exchange: topology.commandsExchange, routingKey: "flights.seat", body: Array(try JSONCoding.encode(seat)),
                    headers: [
                        SagaHeaders.handedBack: .string("12"), SagaHeaders.handedBackSince: .string(String(since)),
                        SagaHeaders.handedBackUndecoded: .string("keyNotFound 'seatClass'"),
                    ],
                    contentType: SagaHeaders.contentType))
            // Sent by no version of the saga.
            var unknown = seat
            unknown.command = "flights.upgrade"
            try await bus.publish(
                OutgoingMessage(
                    exchange: "", routingKey: topology.queue(forService: "flights"), body: Array(try JSONCoding.encode(unknown)),
                    contentType: SagaHeaders.contentType))

            let letters = try await drain(queue: topology.deadLetterQueue, bus: bus, for: .seconds(10), until: 3)
            try await waitUntil { flights.handedBack >= 2 }
            try await deployment?.stop()
            #expect(letters.count == 3)
            let undecoded = letters.first { ($0.headers[SagaHeaders.deadLetterReason] ?? "").contains("decoded the payload") }
            let undecodedReason = undecoded?.headers[SagaHeaders.deadLetterReason] ?? ""
            #expect(
                undecodedReason.contains(
                    "(handed back 12 times; a handler failed with: keyNotFound 'seatClass'; the last instance had no handler for it): deploy a release of 'flights' whose handler decodes that version's payload"
                ), "\(letters.map { $0.headers[SagaHeaders.deadLetterReason] ?? "" })")
            #expect(undecoded?.headers[SagaHeaders.handedBackUndecoded] == nil)
            let expired = letters.first {
                $0.headers[SagaHeaders.deadLetterRoutingKey] == "flights.seat"
                    && !($0.headers[SagaHeaders.deadLetterReason] ?? "").contains("decoded the payload")
            }
            let reason = expired?.headers[SagaHeaders.deadLetterReason] ?? ""
            #expect(
                reason.contains("has no handler for command 'flights.seat', which saga definition '\(trip.name)' version 2 sends"),
                "\(reason)")
            #expect(reason.contains("(handed back 37 times): deploy a release of 'flights' that handles it"), "\(reason)")
            // Requeued from the dead-letter queue, it starts a new hand-back period.
            #expect(expired?.headers[SagaHeaders.handedBackSince] == nil)
            let other = letters.first { $0.headers[SagaHeaders.deadLetterRoutingKey] != "flights.seat" }
            #expect(
                other?.headers[SagaHeaders.deadLetterReason]
                    == "service 'flights' has no handler for command 'flights.upgrade'; command 'flights.upgrade' is not step 3 'seat' action of saga definition '\(trip.name)' version 2"
            )
            // The saga still waits at `seat`.
            #expect(try await store.load(atSeat.id).currentStep == 2)
            // The first hand-back of a command in a process is a warning that says what to check
            // (this release does not run version 2, so: deploy one that handles it); the later
            // ones are debug lines, with an info line a minute at most (HandBackLogTests).
            let handBacks = logs.entries.filter { "\($0.message)".hasPrefix("handing back command 'flights.seat'") }
            #expect(handBacks.count >= 2)
            #expect(handBacks.first?.level == .warning)
            #expect(handBacks.dropFirst().allSatisfy { $0.level == .debug }, "\(handBacks.map(\.level))")
            // Counted for the alert on hand-backs that do not stop.
            #expect(try metrics.expectCounter("saga_handed_back_total", [("service", "flights")]).totalValue >= 2)
            let hint = handBacks.first?.metadata["hint"].map { "\($0)" } ?? ""
            #expect(hint.hasPrefix("deploy a release of 'flights' that handles it if none runs"), "\(hint)")
        } catch {
            try? await deployment?.stop()
            await bus.shutdown()
            await close()
            throw error
        }
        await bus.shutdown()
        await close()
    }

    /// Reads a queue until `count` messages arrived or `duration` passed; acknowledges them.
    private func drain(queue: String, bus: any MessageBus, for duration: Duration, until count: Int = .max) async throws -> [Delivery] {
        let deliveries = try await bus.consume(queue: queue, prefetch: 50)
        let collected = Collected()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await delivery in deliveries {
                    try await delivery.ack()
                    if collected.append(delivery) >= count { return }
                }
            }
            group.addTask { try await Task.sleep(for: duration) }
            // Whichever ends first (enough messages, or the time) ends the reading.
            try await group.next()
            group.cancelAll()
        }
        return collected.all
    }

    /// Waits until every saga is completed or compensated (or needs attention); their states.
    private func terminalStates(of ids: [SagaID], in store: any SagaStore, timeout: Duration) async throws -> [SagaID: SagaState] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var finals: [SagaID: SagaState] = [:]
        while true {
            for id in ids where finals[id] == nil {
                let state = try await store.load(id)
                if state.status.isTerminal || state.status == .needsAttention { finals[id] = state }
            }
            if finals.count == ids.count { return finals }
            if ContinuousClock.now > deadline {
                let waiting = ids.filter { finals[$0] == nil }
                var described: [String] = []
                for id in waiting.prefix(5) {
                    let state = try await store.load(id)
                    described.append("\(id) v\(state.definitionVersion) \(state.status.rawValue) at step \(state.currentStep)")
                }
                throw TestFailure("\(waiting.count) sagas did not finish within \(timeout): \(described.joined(separator: "; "))")
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

/// The `trip` definitions and what they should do.
struct Trip: Sendable {
    let name: String
    let v1: SagaDefinition
    let v2: SagaDefinition

    init(name: String) {
        self.name = name
        do {
            v1 = try SagaBuilder(name)
                .version(1)
                .step("hotel", action: "hotels.book", compensation: "hotels.cancel")
                .step("flight", action: "flights.book", compensation: "flights.cancel")
                .step("pay", action: "payments.charge")
                .build()
            v2 = try SagaBuilder(name)
                .version(2)
                .step("hotel", action: "hotels.book", compensation: "hotels.cancel")
                .step("flight", action: "flights.book", compensation: "flights.cancel")
                .step("seat", action: "flights.seat", compensation: "flights.unseat")
                .step("insure", action: "insurance.cover", compensation: "insurance.cancel")
                .step("pay", action: "payments.charge")
                .build()
        } catch {
            fatalError("the trip definitions are invalid: \(error)")
        }
    }

    /// Release 1's services and their commands.
    static let servicesV1: [String: [String]] = [
        "hotels": ["hotels.book", "hotels.cancel"],
        "flights": ["flights.book", "flights.cancel"],
        "payments": ["payments.charge"],
    ]
    /// Release 2's: a new command in `flights`, a new service `insurance`.
    static let servicesV2: [String: [String]] = [
        "hotels": ["hotels.book", "hotels.cancel"],
        "flights": ["flights.book", "flights.cancel", "flights.seat", "flights.unseat"],
        "insurance": ["insurance.cover", "insurance.cancel"],
        "payments": ["payments.charge"],
    ]

    /// Every fifth trip's payment is declined, so the saga compensates.
    static func payload(_ index: Int) -> JSONObject {
        ["trip": .number(JSONNumber(index)), "decline": .bool(index % 5 == 0)]
    }

    static func declines(_ payload: JSONObject) -> Bool { payload["decline"]?.boolValue == true }

    /// The history as `step/phase/outcome`.
    static func history(_ saga: SagaState) -> [String] {
        saga.history.map { "\($0.stepName)/\($0.phase.rawValue)/\($0.outcome.rawValue)" }
    }

    static func expectedHistory(version: Int, declined: Bool) -> [String] {
        let steps = version == 1 ? ["hotel", "flight"] : ["hotel", "flight", "seat", "insure"]
        let forward = steps.map { "\($0)/action/completed" }
        guard declined else { return forward + ["pay/action/completed"] }
        return forward + ["pay/action/failed"] + steps.reversed().map { "\($0)/compensation/completed" }
    }

    /// The effects of a saga, sorted (a command that took effect twice appears twice).
    static func expectedEffects(version: Int, declined: Bool) -> [String] {
        let actions = version == 1 ? ["hotels.book", "flights.book"] : ["hotels.book", "flights.book", "flights.seat", "insurance.cover"]
        guard declined else { return (actions + ["payments.charge"]).sorted() }
        let compensations =
            version == 1 ? ["hotels.cancel", "flights.cancel"] : ["hotels.cancel", "flights.cancel", "flights.unseat", "insurance.cancel"]
        return (actions + compensations).sorted()
    }
}

/// One release of the services: the definitions it was built with and its handlers.
struct Release: Sendable {
    let number: Int
    let definitions: SagaDefinitionRegistry
    let handlers: [String: SagaHandlerRegistry]

    init(number: Int, definitions: [SagaDefinition], services: [String: [String]], ledger: UpgradeLedger) throws {
        self.number = number
        self.definitions = try SagaDefinitionRegistry(definitions)
        var handlers: [String: SagaHandlerRegistry] = [:]
        for (service, commands) in services {
            var registry = SagaHandlerRegistry()
            for command in commands {
                registry.register(command) { context in
                    // Slow enough that sagas are in flight when the releases change.
                    try await Task.sleep(for: .milliseconds(Int.random(in: 40...120)))
                    if context.command == "payments.charge", Trip.declines(context.payload) {
                        try await context.failAndCompensate(reason: "card declined")
                        return
                    }
                    ledger.record(context, release: number)
                    if context.phase == .action {
                        try await context.completeStep()
                    } else {
                        try await context.completeCompensation()
                    }
                }
            }
            handlers[service] = registry
        }
        self.handlers = handlers
    }

    private init(number: Int, definitions: SagaDefinitionRegistry, handlers: [String: SagaHandlerRegistry]) {
        self.number = number
        self.definitions = definitions
        self.handlers = handlers
    }

    /// This release's instances of one service.
    func only(_ service: String) -> Release {
        Release(number: number, definitions: definitions, handlers: handlers.filter { $0.key == service })
    }

    /// This release's instances of every service but one.
    func without(_ service: String) -> Release {
        Release(number: number, definitions: definitions, handlers: handlers.filter { $0.key != service })
    }
}

/// A release's running participants, one per service, each on a broker connection of its own.
struct Deployment: Sendable {
    let group: ServiceGroup
    let running: Task<Void, any Error>
    let buses: [any MessageBus]

    /// Starts one participant per service of `release` (on `buses[service]` when given).
    static func start(
        _ release: Release, store: any SagaStore, topology: SagaTopology, amqp: String, buses given: [String: any MessageBus] = [:],
        logger: Logger = quietTestLogger
    ) async throws -> Deployment {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var buses: [any MessageBus] = []
        for (service, handlers) in release.handlers.sorted(by: { $0.key < $1.key }) {
            let bus: any MessageBus
            if let existing = given[service] { bus = existing } else { bus = try await RabbitMQBus.connect(url: amqp) }
            buses.append(bus)
            let participant = SagaParticipant(
                configuration: ParticipantConfiguration(
                    service: service, topology: topology, prefetch: 8, outboxPollInterval: .milliseconds(200),
                    outboxGracePeriod: .milliseconds(500), reaper: nil),
                definitions: release.definitions, handlers: handlers, bus: bus, store: store, logger: logger)
            services.append(.init(service: participant))
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: quietTestLogger))
        // Test code: the group runs until `stop()` shuts it down gracefully.
        let running = Task { try await group.run() }
        return Deployment(group: group, running: running, buses: buses)
    }

    /// Shuts the participants down gracefully (running handlers finish), then closes their
    /// connections, so that the broker gives the deliveries they had not started to others.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        let result = await running.result
        for bus in buses { await bus.shutdown() }
        try result.get()
    }
}

/// What the fake services did: effects apply once per idempotency key; calls are counted per
/// release and per version of the saga they served.
final class UpgradeLedger: Sendable {
    struct Call: Sendable {
        var release: Int
        var version: Int
        var command: String
        var sagaID: SagaID
        var at: ContinuousClock.Instant
    }
    private let state = Mutex<(effects: [String: Call], calls: [Call])>(([:], []))

    func record(_ context: SagaContext, release: Int) {
        let version = context.sagaContext[SagaState.definitionVersionKey].flatMap { Int($0) } ?? 1
        let call = Call(release: release, version: version, command: context.command, sagaID: context.sagaID, at: .now)
        state.withLock { state in
            state.calls.append(call)
            if state.effects[context.idempotencyKey] == nil { state.effects[context.idempotencyKey] = call }
        }
    }

    /// The commands that took effect for a saga, sorted (one per idempotency key).
    func effects(of sagaID: SagaID) -> [String] {
        state.withLock { $0.effects.values.filter { $0.sagaID == sagaID }.map(\.command).sorted() }
    }

    /// How many handler calls a release made for sagas of a version (since `after`).
    func calls(release: Int, version: Int, after: ContinuousClock.Instant? = nil) -> Int {
        state.withLock { state in
            state.calls.filter { call in
                call.release == release && call.version == version && after.map { call.at > $0 } ?? true
            }.count
        }
    }

    /// How many handler calls a release made for these commands.
    func calls(release: Int, commands: Set<String>) -> Int {
        state.withLock { $0.calls.filter { $0.release == release && commands.contains($0.command) }.count }
    }
}

/// A bus that counts the commands a participant hands back (published with
/// ``SagaHeaders/handedBack``).
final class CountingBus: MessageBus {
    private let base: any MessageBus
    private let count = Mutex(0)

    init(_ base: any MessageBus) { self.base = base }

    var handedBack: Int { count.withLock { $0 } }

    func declare(_ topology: Topology) async throws { try await base.declare(topology) }

    func publish(_ message: OutgoingMessage) async throws {
        try await base.publish(message)
        if message.headers[SagaHeaders.handedBack] != nil { count.withLock { $0 += 1 } }
    }

    func consume(queue: String, prefetch: Int) async throws -> DeliveryStream { try await base.consume(queue: queue, prefetch: prefetch) }

    func shutdown() async { await base.shutdown() }
}

/// Deliveries collected by a consuming task.
final class Collected: Sendable {
    private let deliveries = Mutex<[Delivery]>([])

    /// Adds one; the count so far.
    func append(_ delivery: Delivery) -> Int {
        deliveries.withLock {
            $0.append(delivery)
            return $0.count
        }
    }

    var all: [Delivery] { deliveries.withLock { $0 } }
}

/// How a participant logs the hand-backs of a command (a rolling upgrade hands back hundreds: an
/// outside trial counted about 520 info lines for 200 sagas).
@Suite("Hand-back log lines")
struct HandBackLogTests {
    @Test func theFirstIsAWarningThenALineAMinuteCountingTheOthers() {
        let log = HandBackLog()
        let t0 = ContinuousClock.now
        #expect(log.line(for: "seat", at: t0) == .init(level: .warning, othersSinceLastLine: 0))
        // Each command has its own first line.
        #expect(log.line(for: "meal", at: t0) == .init(level: .warning, othersSinceLastLine: 0))
        for second in 1..<60 {
            #expect(log.line(for: "seat", at: t0 + .seconds(second)) == .init(level: .debug, othersSinceLastLine: 0))
        }
        #expect(log.line(for: "seat", at: t0 + .seconds(60)) == .init(level: .info, othersSinceLastLine: 59))
        #expect(log.line(for: "seat", at: t0 + .seconds(61)) == .init(level: .debug, othersSinceLastLine: 0))
        #expect(log.line(for: "seat", at: t0 + .seconds(200)) == .init(level: .info, othersSinceLastLine: 1))
        #expect(log.line(for: "meal", at: t0 + .seconds(30)) == .init(level: .debug, othersSinceLastLine: 0))
    }
}

/// A rolling upgrade that changes a command's payload (a field renamed under the same command
/// name): a release whose handler cannot decode the payload of a saga of a version it does not
/// judge — one it was not built with, or an older one — hands the command back instead of failing
/// the step (an outside trial: 121 sagas were compensated that way during a rollout); the release
/// that decodes it runs the step. For the newest version a release was built with, a payload
/// that does not decode still fails the step.
@Suite("Rolling upgrade: a changed payload", .timeLimit(.minutes(2)))
struct ChangedPayloadUpgradeTests {
    struct ChargeV1: Codable { var card: String }
    struct ChargeV2: Codable { var paymentToken: String }
    final class Calls: Sendable {
        let list = Mutex<[String]>([])
    }

    static func definitions(_ name: String) throws -> (v1: SagaDefinition, v2: SagaDefinition) {
        let v1 = try SagaBuilder(name).version(1)
            .step("reserve", action: "seats.reserve", compensation: "seats.release")
            .step("charge", action: "billing.charge", compensation: "billing.refund")
            .build()
        let v2 = try SagaBuilder(name).version(2)
            .step("reserve", action: "seats.reserve", compensation: "seats.release")
            .step("charge", action: "billing.charge", compensation: "billing.refund")
            .build()
        return (v1, v2)
    }

    /// The billing handlers of a release that decodes `Payload` strictly.
    static func billing<Payload: Codable & Sendable>(_: Payload.Type, calls: Calls, release: Int) -> SagaHandlerRegistry {
        var registry = SagaHandlerRegistry()
        registry.register("billing.charge") { context in
            _ = try context.payload(as: Payload.self)
            calls.list.withLock { $0.append("release \(release)") }
            try await context.completeStep()
        }
        registry.register("billing.refund") { context in try await context.completeCompensation() }
        return registry
    }

    @Test func aPayloadOfAVersionThisReleaseDoesNotJudgeIsHandedBackToTheReleaseThatDecodesIt() async throws {
        let name = "ticket-\(UUID().uuidString.prefix(6).lowercased())"
        let (v1, v2) = try Self.definitions(name)
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "cp-\(name)", delayLevels: [1])
        let calls = Calls()
        var seats = SagaHandlerRegistry()
        seats.register("seats.reserve") { try await $0.completeStep() }
        seats.register("seats.release") { try await $0.completeCompensation() }
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .info
            return handler
        }()
        let logger = Logger(label: "billing", factory: { _ in logs })

        // The new release starts v2 sagas; only the old release's billing (built with v1, whose
        // handler decodes ChargeV1) runs for now.
        let manager = SagaManager(
            definitions: try SagaDefinitionRegistry([v1, v2]), bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        for (service, commands) in [("seats", ["seats.reserve", "seats.release"]), ("billing", ["billing.charge", "billing.refund"])] {
            try await bus.declare(topology.topology(forService: service, commands: commands))
        }
        func participant(_ service: String, _ definitions: [SagaDefinition], _ handlers: SagaHandlerRegistry, logger: Logger)
            throws -> SagaParticipant
        {
            SagaParticipant(
                configuration: ParticipantConfiguration(service: service, topology: topology, reaper: nil),
                definitions: try SagaDefinitionRegistry(definitions), handlers: handlers, bus: bus, store: store, logger: logger)
        }
        let seatsService = try participant("seats", [v1, v2], seats, logger: quietTestLogger)
        let oldBilling = try participant("billing", [v1], Self.billing(ChargeV1.self, calls: calls, release: 1), logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await seatsService.run() }
            group.addTask { try await oldBilling.run() }
            let id = try await manager.start(name, payload: ["paymentToken": "tok-1"])
            // The old release cannot decode it: handed back, not compensated.
            try await eventually("the old release hands the command back") {
                logs.entries.contains { "\($0.message)".contains("cannot decode the payload of saga definition '\(name)' version 2") }
            }
            #expect(try await store.load(id).status == .running)
            // The new release's billing (built with v1 and v2, decoding ChargeV2) comes up; the
            // hand-backs reach it.
            let newBilling = try participant(
                "billing", [v1, v2], Self.billing(ChargeV2.self, calls: calls, release: 2), logger: quietTestLogger)
            group.addTask { try await newBilling.run() }
            let final = try await manager.outcome(of: id, timeout: .seconds(30))
            #expect(final.status == .completed, "\(final.status): \(final.failureReason ?? "")")
            #expect(calls.list.withLock { $0 } == ["release 2"])
            let handBack = logs.entries.first { "\($0.message)".contains("cannot decode the payload") }
            #expect(handBack?.level == .warning)

            // The newest version the new release was built with is its to judge: a payload that
            // no release decodes fails the step there, which compensates, as before (the old
            // release hands it back).
            let broken = try await manager.start(name, payload: ["amount": 3])
            let failed = try await manager.outcome(of: broken, timeout: .seconds(30))
            #expect(failed.status == .compensated, "\(failed.status)")
            #expect(failed.failureReason?.contains("does not decode as ChargeV2") == true, "\(failed.failureReason ?? "")")
            group.cancelAll()
        }
    }

    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<200 {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("not within 10 s: \(what)")
    }
}

/// A starter of an older release that starts sagas on a version older than the store's newest
/// says so at its first start (an outside trial's old starter created sagas on a retired
/// version without a word).
@Suite("Starters of an older release")
struct OlderStarterTests {
    @Test func aStarterOnAnOlderVersionThanTheStoresSaysSoOnce() async throws {
        let name = "ticket-\(UUID().uuidString.prefix(6).lowercased())"
        let (v1, v2) = try ChangedPayloadUpgradeTests.definitions(name)
        let store = InMemorySagaStore()
        let bus = InMemoryBus()
        let topology = SagaTopology(prefix: "os-\(name)", delayLevels: [1])
        let newer = SagaManager(
            definitions: try SagaDefinitionRegistry([v1, v2]), bus: bus, store: store, topology: topology, logger: quietTestLogger)
        _ = try await newer.start(name, payload: [:])
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .info
            return handler
        }()
        let older = SagaManager(
            definitions: try SagaDefinitionRegistry([v1]), bus: bus, store: store, topology: topology,
            logger: Logger(label: "starter", factory: { _ in logs }))
        _ = try await older.start(name, payload: [:])
        _ = try await older.start(name, payload: [:])
        let warnings = logs.entries.filter { $0.level == .warning }.map { "\($0.message)" }
        #expect(warnings.filter { $0.contains("starts sagas of") }.count == 1, "\(warnings)")
        #expect(warnings.first?.hasPrefix("this process starts sagas of '\(name)' on version 1, but the store has version 2") == true)
        // Nothing to say for the newest.
        #expect(SagaManager.olderThanStored([v1, v2], stored: try await store.definitions()).isEmpty)
    }
}
