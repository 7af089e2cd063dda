import Configuration
import CoreMetrics
import Foundation
import MetricsTestKit
import Synchronization
import Testing

@testable import Participant

/// A seal for tests, not cryptographic: a keyed FNV-1a digest of the bytes. (The PostgreSQL
/// store's HMAC seal is tested in `PostgresStoreTests`.)
struct TestStateSeal: SagaStateSeal {
    var key: UInt64 = 0x5A6A_4B17

    func seal(_ bytes: [UInt8]) -> String? { String(digest(bytes), radix: 16) }

    func verifies(_ seal: String, of bytes: [UInt8]) -> Bool { seal == String(digest(bytes), radix: 16) }

    private func digest(_ bytes: [UInt8]) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ key
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }
}

/// Settles nothing (for deliveries made by hand).
private struct NoSettler: DeliverySettler {
    func settle(_ settlement: Settlement) async throws {}
}

/// Commands carry a sealed copy of their saga's state, which participants use instead of
/// loading the saga when it is fresh, first-delivered and verified (`SagaTopology.stateInCommands`).
@Suite("Commands carry their saga's state", .timeLimit(.minutes(1)))
struct StateInCommandsTests {
    let bus = InMemoryBus()
    let ledger = Ledger()
    let metrics = TestMetricsBackend.shared

    /// The order handlers under service names of their own, so that the counters belong to one test.
    private func handlers(suffix: String) -> [String: SagaHandlerRegistry] {
        Dictionary(uniqueKeysWithValues: orderHandlers(ledger: ledger).map { ("\($0.key)-\(suffix)", $0.value) })
    }

    private func count(_ service: String, _ source: String) -> Int64 {
        (try? metrics.expectCounter("saga_command_state_total", [("saga", "order"), ("service", service), ("source", source)]).totalValue)
            ?? 0
    }

    @Test func sagasCompleteOnTheStateTheirCommandsCarryWithoutLoadingIt() async throws {
        let store = InMemorySagaStore(stateSeal: TestStateSeal())
        // A window far longer than the default 2 s, and an outbox relay that waits a minute
        // before it sends a command again: this test is about copies being used. Under the load of
        // the other suites a command once waited longer than 2 s in CI (its copy was then too
        // old), and the fixture's usual 0.5 s grace let the relay send duplicates, which carry no
        // copy: either way the receivers loaded their sagas.
        var topology = testTopology
        topology.stateInCommands = .seconds(120)
        let finals = try await withParticipants(
            handlers(suffix: "copies"), buses: [bus], starterBus: bus, store: store, topology: topology,
            outboxGracePeriod: .seconds(60)
        ) { manager in
            var finals: [SagaState] = []
            for index in 0..<3 {
                let id = try await manager.start("order", payload: ["orderId": .string("o-copy-\(index)"), "amount": 5])
                finals.append(try await manager.outcome(of: id, timeout: .seconds(30)))
            }
            return finals
        }
        #expect(finals.allSatisfy { $0.status == .completed })
        #expect(finals.allSatisfy { $0.payload["trackingId"] == "t-1" && $0.payload["chargeId"] != nil })
        // One delivery per saga and service, none loaded.
        for service in ["inventory-copies", "payment-copies", "shipping-copies"] {
            #expect(count(service, "command") == 3, "\(service)")
            #expect(count(service, "store") == 0, "\(service)")
        }
    }

    @Test(arguments: [("noseal", true), ("off", false)])
    func withoutASealOrWithCopiesTurnedOffEveryCommandLoadsItsSaga(suffix: String, sealed: Bool) async throws {
        let store = InMemorySagaStore(stateSeal: sealed ? TestStateSeal() : nil)
        var topology = testTopology
        if sealed { topology.stateInCommands = nil }
        let final = try await withParticipants(
            handlers(suffix: suffix), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-load", "amount": 5])
            return try await manager.outcome(of: id, timeout: .seconds(30))
        }
        #expect(final.status == .completed)
        for service in ["inventory", "payment", "shipping"].map({ "\($0)-\(suffix)" }) {
            #expect(count(service, "store") >= 1, "\(service)")
            #expect(count(service, "command") == 0, "\(service)")
        }
    }

    /// Stores a saga whose `orderId` is "from-the-store", runs the services (inventory's handler
    /// under `service` records the `orderId` it sees) and publishes the message `message` makes
    /// of the saga's first command and the text of a copy whose `orderId` is `copied`. Returns
    /// the saga's end and what the handler saw.
    private func probe(
        _ id: String, service: String, services: [String: SagaHandlerRegistry], copied: String,
        message: @Sendable (SagaCommand, [UInt8]) -> OutgoingMessage
    ) async throws -> (final: SagaState, seen: String?) {
        let store = InMemorySagaStore(stateSeal: TestStateSeal())
        let seen = Mutex<String?>(nil)
        var services = services
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            seen.withLock { $0 = context.payload["orderId"]?.stringValue }
            try await context.completeStep()
        }
        services[service] = inventory
        let (stored, _) = SagaStateMachine(definition: orderSaga).start(
            id: id, payload: ["orderId": "from-the-store", "amount": 1], context: [SagaTopology.contextKey: testTopology.prefix],
            now: Date())
        _ = try await store.create(stored, outbox: [])
        var copy = try await store.load(id)
        copy.payload["orderId"] = .string(copied)
        let command = SagaCommand(
            sagaID: id, sagaName: "order", command: "inventory.reserve", step: 0, stepName: "reserve-stock", phase: .action, attempt: 1)
        // Sent once the participants consume: a copy waiting in the queue while they start (slow
        // on a loaded machine; a CI run failed on it) could be older than the 2 s a copy is used for.
        let final = try await withParticipants(services, bus: bus, store: store, waitUntilConsuming: true) { [copy] manager in
            // Made when it is sent, as a participant makes it.
            var fresh = copy
            fresh.updatedAt = Date()
            try await bus.publish(message(command, try SagaStateCopy.json(fresh)))
            return try await manager.outcome(of: id, timeout: .seconds(30))
        }
        return (final, seen.withLock { $0 })
    }

    @Test(arguments: [false, true])
    func aCopyIsUsedOnlyWhenItsSealVerifies(forged: Bool) async throws {
        let (final, seen) = try await probe(
            "copy-probe-\(forged)", service: "inventory", services: orderHandlers(ledger: ledger), copied: "from-the-command"
        ) { command, bytes in
            OutgoingMessage(
                exchange: testTopology.commandsExchange, routingKey: "inventory.reserve",
                body: command.jsonBytes(stateCopy: (bytes, forged ? "0123456789abcdef" : TestStateSeal().seal(bytes)!)),
                contentType: SagaHeaders.contentType)
        }
        #expect(final.status == .completed)
        #expect(seen == (forged ? "from-the-store" : "from-the-command"))
    }

    /// Releases before 2026-12-01 sent the copy in two headers: a command from one of them runs
    /// on the saga loaded from the store (a rolling upgrade is only slower, never wrong).
    @Test func aCopyInTheHeadersOfAnOlderReleaseIsIgnored() async throws {
        let (final, seen) = try await probe(
            "legacy-copy", service: "inventory-legacy", services: handlers(suffix: "legacy"), copied: "from-the-headers"
        ) { command, bytes in
            OutgoingMessage(
                exchange: testTopology.commandsExchange, routingKey: "inventory.reserve", body: command.jsonBytes,
                headers: [
                    "x-saga-state": .string(String(decoding: bytes, as: UTF8.self)),
                    "x-saga-state-seal": .string(TestStateSeal().seal(bytes)!),
                ],
                contentType: SagaHeaders.contentType)
        }
        #expect(final.status == .completed)
        #expect(seen == "from-the-store")
        #expect(count("inventory-legacy", "store") >= 1)
    }

    @Test func aCopyIsRefusedWhenRedeliveredTooOldFromTheFutureOrOfAnotherSaga() throws {
        let engine = SagaEngine(
            store: InMemorySagaStore(stateSeal: TestStateSeal()), bus: bus, definitions: orderDefinitions, topology: testTopology)
        let now = Date()
        let (state, _) = SagaStateMachine(definition: orderSaga).start(id: "s-1", payload: ["orderId": "o"], now: now)
        let command = SagaCommand(
            sagaID: "s-1", sagaName: "order", command: "inventory.reserve", step: 0, stepName: "reserve-stock", phase: .action, attempt: 1)
        func body(_ state: SagaState, for command: SagaCommand = command, seal: String? = nil) throws -> SagaCommandBody {
            let copy = try #require(engine.sealedCopy(of: state))
            return try SagaCommandBody(jsonBytes: command.jsonBytes(stateCopy: (copy.json, seal ?? copy.seal)))
        }
        func carried(_ body: SagaCommandBody, redelivered: Bool = false, engine: SagaEngine = engine) -> SagaState? {
            engine.carriedState(of: body, redelivered: redelivered, logger: quietTestLogger, now: now)
        }
        let used = try #require(carried(try body(state)))
        #expect(used.id == "s-1" && used.payload == state.payload && used.version == state.version)
        #expect(carried(try body(state), redelivered: true) == nil)
        #expect(carried(try body(state, seal: "00")) == nil)
        var old = state
        old.updatedAt = now.addingTimeInterval(-3)
        #expect(carried(try body(old)) == nil)
        var future = state
        future.updatedAt = now.addingTimeInterval(3)
        #expect(carried(try body(future)) == nil)
        var other = command
        other.sagaID = "s-2"
        #expect(carried(try body(state, for: other)) == nil)
        var off = engine
        off = SagaEngine(
            store: engine.store, bus: bus, definitions: orderDefinitions,
            topology: {
                var topology = testTopology
                topology.stateInCommands = nil
                return topology
            }())
        #expect(off.sealedCopy(of: state) == nil)
        #expect(carried(try body(state), engine: off) == nil)
    }

    @Test func theCopiesAgeLimitIsReadFromConfiguration() throws {
        func topology(_ value: String?) throws -> SagaTopology {
            var values: [AbsoluteConfigKey: ConfigValue] = [:]
            if let value { values["state.in.commands.seconds"] = ConfigValue(stringLiteral: value) }
            return try SagaTopology(reader: ConfigReader(provider: InMemoryProvider(values: values)))
        }
        #expect(try topology(nil).stateInCommands == .seconds(2))
        #expect(try topology("0.5").stateInCommands == .milliseconds(500))
        for off in ["0", "0.0", "off", " OFF "] { #expect(try topology(off).stateInCommands == nil, "\(off)") }
        #expect(SagaTopology(stateInCommands: .zero).stateInCommands == nil)
        let error = try #require(throws: SagaError.self) { try topology("soon") }
        #expect(error.message.contains("state.in.commands.seconds"))
    }

    @Test func largeSagasAndDeadLettersCarryNoCopy() throws {
        let engine = SagaEngine(
            store: InMemorySagaStore(stateSeal: TestStateSeal()), bus: bus, definitions: orderDefinitions, topology: testTopology)
        let (state, _) = SagaStateMachine(definition: orderSaga).start(id: "s-big", payload: ["orderId": "o"], now: Date())
        var large = state
        large.payload["notes"] = .string(String(repeating: "x", count: SagaEngine.maxStateCopyBytes))
        #expect(engine.sealedCopy(of: state) != nil)
        #expect(engine.sealedCopy(of: large) == nil)

        let copy = try #require(engine.sealedCopy(of: state))
        let command = SagaCommand(
            sagaID: "s-big", sagaName: "order", command: "inventory.reserve", step: 0, stepName: "reserve-stock", phase: .action,
            attempt: 1)
        let delivery = Delivery(
            exchange: testTopology.commandsExchange, routingKey: "inventory.reserve", queue: "q",
            body: command.jsonBytes(stateCopy: (copy.json, copy.seal)),
            headers: ["x-saga-state": "{}", "x-saga-state-seal": "00", "x-other": "kept"], settler: NoSettler())
        let letter = SagaMessages.deadLetter(delivery, reason: "test", service: "s", topology: testTopology, now: Date())
        // The dead letter is the command alone, as the outbox keeps it; the headers in which older
        // releases carried the copy go too, and others stay.
        #expect(letter.body == command.jsonBytes)
        #expect(letter.headers["x-saga-state"] == nil && letter.headers["x-saga-state-seal"] == nil)
        #expect(letter.headers["x-other"] == "kept")
        // A body that is not a command is dead-lettered as it is.
        let junk = Delivery(
            exchange: testTopology.commandsExchange, routingKey: "inventory.reserve", queue: "q", body: Array("{not json".utf8),
            settler: NoSettler())
        #expect(SagaMessages.deadLetter(junk, reason: "test", service: "s", topology: testTopology, now: Date()).body == junk.body)
    }

    @Test func aCopyDoesNotCountAgainstTheBodyLimit() throws {
        let engine = SagaEngine(
            store: InMemorySagaStore(stateSeal: TestStateSeal()), bus: bus, definitions: orderDefinitions, topology: testTopology)
        var (state, _) = SagaStateMachine(definition: orderSaga).start(id: "s-limit", payload: ["orderId": "o"], now: Date())
        state.payload["notes"] = .string(String(repeating: "n", count: 2_000))
        let copy = try #require(engine.sealedCopy(of: state))
        let command = SagaCommand(
            sagaID: "s-limit", sagaName: "order", command: "inventory.reserve", step: 0, stepName: "reserve-stock", phase: .action,
            attempt: 1)
        func decode(_ body: [UInt8], limit: Int) -> Result<SagaCommandBody, SagaError> {
            SagaMessages.command(
                from: Delivery(
                    exchange: testTopology.commandsExchange, routingKey: command.command, queue: "q", body: body,
                    contentType: SagaHeaders.contentType, settler: NoSettler()),
                maxBodyBytes: limit)
        }
        // A limit the command fits in takes it with its 2 KB copy.
        let carried = command.jsonBytes(stateCopy: (copy.json, copy.seal))
        let limit = command.jsonBytes.count + 20
        #expect(carried.count > limit)
        #expect(try decode(carried, limit: limit).get().stateCopy != nil)
        // The command itself over the limit is refused, copy or not.
        func refusal(_ body: [UInt8], limit: Int) -> String? {
            guard case .failure(let error) = decode(body, limit: limit) else { return nil }
            return error.message
        }
        // The reason gives the size that counts (the command without its copy), and the copy's.
        let copyBytes = carried.count - command.jsonBytes.count
        #expect(
            refusal(carried, limit: 100)
                == "command of \(command.jsonBytes.count) bytes (without the \(copyBytes) bytes of its saga's state copy) exceeds the limit of 100 bytes"
        )
        // So is a body that is not a command and larger than the limit, and one larger than the
        // limit plus the largest copy is not even parsed.
        let spaces = [UInt8](repeating: 0x20, count: limit + 10)
        #expect(refusal(spaces, limit: limit) == "body of \(spaces.count) bytes exceeds the limit of \(limit) bytes")
        let huge = [UInt8](repeating: 0x20, count: limit + SagaMessages.stateCopyAllowance + 1)
        #expect(refusal(huge, limit: limit) == "body of \(huge.count) bytes exceeds the limit of \(limit) bytes")
        #expect(refusal(Array("{}".utf8), limit: limit)?.hasPrefix("body is not a saga command") == true)
    }

    @Test func theBranchesOfAParallelGroupCarryNoCopyAndASingleCommandDoes() async throws {
        let definition = try SagaBuilder("fan-out")
            .step("open", action: "orders.open", compensation: "orders.cancel")
            .parallel("prepare") { group in
                group
                    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
                    .step("authorize", action: "payment.authorize", compensation: "payment.void")
            }
            .build()
        let store = InMemorySagaStore(stateSeal: TestStateSeal())
        let engine = SagaEngine(store: store, bus: bus, definitions: try SagaDefinitionRegistry([definition]), topology: testTopology)
        let (state, _) = SagaStateMachine(definition: definition).start(
            id: "fan", payload: [:],
            context: [SagaTopology.contextKey: testTopology.prefix, SagaState.definitionVersionKey: "1", "correlationId": "c-1"],
            now: Date())
        _ = try await store.create(state, outbox: [])
        try await bus.declare(testTopology.shared)
        let queue = testTopology.queue(forService: "fan-out")
        try await bus.declare(testTopology.topology(forService: "fan-out", commands: ["inventory.reserve", "payment.authorize"]))
        #expect(engine.sealedCopy(of: state) != nil)
        let loaded = try await store.load("fan")
        let event = SagaEvent.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: Date())
        guard case .committed = try await engine.advance("fan", from: loaded, event: event, logger: quietTestLogger) else {
            Issue.record("the first step's completion was not committed")
            return
        }
        var commands: [Delivery] = []
        for try await delivery in try await bus.consume(queue: queue, prefetch: 10) {
            try await delivery.ack()
            commands.append(delivery)
            if commands.count == 2 { break }
        }
        #expect(Set(commands.map(\.routingKey)) == ["inventory.reserve", "payment.authorize"])
        #expect(try commands.allSatisfy { try SagaCommandBody(jsonBytes: $0.body).stateCopy == nil })
        // What the body and the properties say is not repeated in headers (the broker decodes
        // every header of every message), nor are SagaKit's own context entries.
        #expect(
            commands.allSatisfy { delivery in
                delivery.headers.keys.allSatisfy { !$0.hasPrefix("x-saga-") && !$0.hasPrefix("sagakit-") }
            })
        #expect(commands.allSatisfy { $0.correlationId == "fan" && $0.headers["correlationId"] == "c-1" })
    }
}
