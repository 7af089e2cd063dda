// Seeds a SQLite saga store with sagas in every status, on the real broker, for the web
// console's browser test (scripts/console-test.sh), then keeps its participant running so that
// the console's actions and live updates have someone to talk to.
//
// Environment: AMQP_URL, STORE_PATH (a SQLite file, created), PREFIX (topology prefix), OUT (a
// JSON file: the ids of the seeded sagas, written when seeding is done).
//
// What it leaves (definition `trip`: book-flight, book-hotel, charge-card ◆ pivot, send-tickets):
// completed, compensated (a business refusal), compensated after retries (a thrown error,
// retried with delays), needs-attention (a compensation that kept failing; repaired once seeding
// is done, so an operator's retry succeeds), compensating (a compensation that hangs), running
// (a handler that hangs: stalled), stuck retrying past the pivot, a `trip` version 2 saga, an
// `invoice` saga, a `checkout` saga in its parallel group `prepare` (pack completed,
// check-credit hanging, gift-wrap skipped by its condition), a `refund` saga waiting for its
// signal `manager.approved` (open-case completed), and one dead letter (a malformed command).
import Foundation
import Participant
import SagaSQLite
import Synchronization

@main
struct ConsoleFixture {
    /// Whether the cause of the failing compensation was "fixed" (after seeding).
    static let repaired = Mutex(false)

    static let flaky = RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(2))

    static func trip(version: Int) throws -> SagaDefinition {
        var builder = SagaBuilder("trip").version(version)
            .step("book-flight", action: "flight.book", compensation: "flight.cancel")
            .step("book-hotel", action: "hotel.book", compensation: "hotel.cancel", options: StepOptions(retry: flaky))
        if version >= 2 {
            builder = builder.step("add-insurance", action: "insurance.add", compensation: "insurance.cancel")
        }
        return
            try builder
            .step("charge-card", action: "payment.charge", options: .pivot)
            .step(
                "send-tickets", action: "tickets.send",
                options: StepOptions(
                    retry: RetryPolicy(maxAttempts: 10_000, initialDelay: .seconds(1), multiplier: 1, maxDelay: .seconds(1)))
            )
            .compensationRetry(RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1), multiplier: 1, maxDelay: .seconds(1)))
            .build()
    }

    /// `checkout`: the parallel group `prepare` (pack, check-credit, gift-wrap when `gift` is
    /// true), then ship.
    static func checkout() throws -> SagaDefinition {
        try SagaBuilder("checkout")
            .parallel("prepare") { group in
                group
                    .step("pack", action: "warehouse.pack", compensation: "warehouse.unpack")
                    .step("check-credit", action: "credit.check")
                    .step("gift-wrap", action: "gift.wrap", when: .isTrue("gift"))
            }
            .step("ship", action: "warehouse.ship", options: .pivot)
            .build()
    }

    /// `refund`: open-case, then a wait for `manager.approved` (a day, then compensated), then pay.
    static func refund() throws -> SagaDefinition {
        try SagaBuilder("refund")
            .step("open-case", action: "case.open", compensation: "case.close")
            .wait("manager-approval", for: "manager.approved", timeout: .seconds(86_400))
            .step("pay", action: "refund.pay", options: .pivot)
            .build()
    }

    static func flag(_ context: SagaContext, _ key: String) -> Bool { context.payload[key] == .bool(true) }

    static func handlers() -> SagaHandlerRegistry {
        var handlers = SagaHandlerRegistry()
        handlers.register("flight.book") { context in
            try await Task.sleep(for: .milliseconds(40))
            try await context.completeStep(merging: ["flight": .string("F-\(context.sagaID.prefix(4))")])
        }
        handlers.register("flight.cancel") { context in
            if flag(context, "hangCancel") { try await Task.sleep(for: .seconds(86_400)) }
            if flag(context, "cancelFlightBroken"), !repaired.withLock({ $0 }) {
                throw FixtureError("the airline's cancellation API answered 503 Service Unavailable")
            }
            try await Task.sleep(for: .milliseconds(30))
            try await context.completeCompensation()
        }
        handlers.register("hotel.book") { context in
            if flag(context, "hangHotel") { try await Task.sleep(for: .seconds(86_400)) }
            if flag(context, "hotelFlaky") { throw FixtureError("hotel service timed out (attempt \(context.attempt))") }
            let nights = context.payload["nights"]?.numberValue.map { NSDecimalNumber(decimal: $0.decimalValue).intValue } ?? 1
            if nights > 14 { return try await context.failAndCompensate(reason: "no rooms for \(nights) nights") }
            try await Task.sleep(for: .milliseconds(60))
            try await context.completeStep(merging: ["hotel": .string("H-\(context.sagaID.prefix(4))")])
        }
        handlers.register("hotel.cancel") { context in try await context.completeCompensation() }
        handlers.register("insurance.add") { context in try await context.completeStep() }
        handlers.register("insurance.cancel") { context in try await context.completeCompensation() }
        handlers.register("payment.charge") { context in
            try await Task.sleep(for: .milliseconds(80))
            try await context.completeStep(merging: ["charged": true])
        }
        handlers.register("tickets.send") { context in
            if flag(context, "ticketsDown") { throw FixtureError("SMTP relay refused the connection") }
            try await context.completeStep()
        }
        handlers.register("invoice.issue") { context in try await context.completeStep(merging: ["invoice": "INV-1"]) }
        handlers.register("warehouse.pack") { context in try await context.completeStep(merging: ["parcel": "P-1"]) }
        handlers.register("warehouse.unpack") { context in try await context.completeCompensation() }
        handlers.register("credit.check") { _ in try await Task.sleep(for: .seconds(86_400)) }
        handlers.register("gift.wrap") { context in try await context.completeStep() }
        handlers.register("warehouse.ship") { context in try await context.completeStep() }
        handlers.register("case.open") { context in try await context.completeStep(merging: ["case": "C-1"]) }
        handlers.register("case.close") { context in try await context.completeCompensation() }
        handlers.register("refund.pay") { context in try await context.completeStep() }
        return handlers
    }

    static func main() async throws {
        let environment = ProcessInfo.processInfo.environment
        func required(_ name: String) throws -> String {
            guard let value = environment[name], !value.isEmpty else { throw FixtureError("set \(name)") }
            return value
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        let logger = Logger(label: "console-fixture")
        let prefix = try required("PREFIX")
        let topology = SagaTopology(prefix: prefix, delayLevels: [1, 2])
        let v1 = try trip(version: 1)
        let v2 = try trip(version: 2)
        let invoice = try SagaBuilder("invoice").step("issue", action: "invoice.issue").build()
        let all = try SagaDefinitionRegistry([v1, v2, invoice, try checkout(), try refund()])
        let bus = try await RabbitMQBus.connect(url: try required("AMQP_URL"))
        let store = try SQLiteSagaStore(url: "sqlite://\(try required("STORE_PATH"))", logger: logger)
        try await store.withRunning { @Sendable store in
            let participant = SagaParticipant(
                configuration: ParticipantConfiguration(
                    service: "fixture", topology: topology, prefetch: 32, outboxPollInterval: .milliseconds(300),
                    outboxGracePeriod: .milliseconds(1000),
                    reaper: ReaperConfiguration(pollInterval: .seconds(3600), stalledThreshold: .seconds(7200))),
                definitions: all, handlers: handlers(), bus: bus, store: store, logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await participant.run() }
                try await seed(store: store, bus: bus, topology: topology, v1: v1, v2: v2, invoice: invoice, logger: logger)
                print("console fixture: seeded; the participant keeps running until the process is stopped")
                try await group.next()
            }
        }
    }

    static func seed(
        store: SQLiteSagaStore, bus: RabbitMQBus, topology: SagaTopology, v1: SagaDefinition, v2: SagaDefinition,
        invoice: SagaDefinition, logger: Logger
    ) async throws {
        // A manager on version 1 and one on version 2: each starts sagas on the version it knows.
        let manager = SagaManager(
            definitions: try SagaDefinitionRegistry([v1, invoice, try checkout(), try refund()]), bus: bus, store: store,
            topology: topology,
            logger: logger)
        let managerV2 = SagaManager(
            definitions: try SagaDefinitionRegistry([v2]), bus: bus, store: store, topology: topology, logger: logger)
        try await store.register(v2)
        func start(_ manager: SagaManager, _ name: String, _ payload: JSONObject) async throws -> SagaID {
            let trace = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            let span = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            return try await manager.start(name, payload: payload, context: ["traceparent": "00-\(trace)-\(span)-01"])
        }
        func trip(_ extra: JSONObject, _ nights: Int = 3) -> JSONObject {
            var payload: JSONObject = [
                "tripId": .string("T-\(Int.random(in: 1000...9999))"), "nights": .number(nights), "traveller": "Ada Lovelace",
                "cardNumber": "4111 1111 1111 1111",
            ]
            payload.merge(extra) { $1 }
            return payload
        }
        func finish(_ id: SagaID, _ expected: SagaStatus) async throws {
            let state = try await manager.outcome(of: id, timeout: .seconds(60))
            guard state.status == expected else {
                throw FixtureError("saga \(id) ended \(state.status), expected \(expected): \(state.failureReason ?? "")")
            }
        }
        func wait(_ id: SagaID, until done: (SagaState) -> Bool, what: String) async throws {
            for _ in 0..<600 {
                if done(try await store.load(id)) { return }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw FixtureError("saga \(id) never reached: \(what)")
        }

        var ids: [String: String] = [:]
        for _ in 0..<3 {
            let id = try await start(manager, "trip", trip([:]))
            try await finish(id, .completed)
            ids["completed"] = id
        }
        ids["compensated"] = try await start(manager, "trip", trip([:], 30))
        ids["compensatedAfterRetries"] = try await start(manager, "trip", trip(["hotelFlaky": true]))
        ids["needsAttention"] = try await start(manager, "trip", trip(["cancelFlightBroken": true], 30))
        ids["compensating"] = try await start(manager, "trip", trip(["hangCancel": true], 30))
        ids["running"] = try await start(manager, "trip", trip(["hangHotel": true]))
        ids["stuck"] = try await start(manager, "trip", trip(["ticketsDown": true]))
        ids["version2"] = try await start(managerV2, "trip", trip([:]))
        ids["invoice"] = try await start(manager, "invoice", ["customer": "ACME", "email": "billing@acme.example"])
        ids["parallel"] = try await start(manager, "checkout", ["gift": false])
        ids["waiting"] = try await start(manager, "refund", ["amount": 120])

        try await finish(ids["compensated"]!, .compensated)
        try await finish(ids["compensatedAfterRetries"]!, .compensated)
        try await finish(ids["needsAttention"]!, .needsAttention)
        try await finish(ids["version2"]!, .completed)
        try await finish(ids["invoice"]!, .completed)
        try await wait(
            ids["compensating"]!,
            until: { $0.status == .compensating && $0.history.contains { $0.phase == .compensation } || $0.status == .compensating },
            what: "compensating")
        try await wait(ids["running"]!, until: { $0.currentStep == 1 }, what: "running at book-hotel")
        try await wait(ids["stuck"]!, until: { $0.currentStep == 3 && $0.attempt >= 5 }, what: "send-tickets attempt 5")
        try await wait(
            ids["parallel"]!, until: { $0.history.contains { $0.stepName == "pack" && $0.outcome == .completed } },
            what: "pack completed in the parallel group")
        try await wait(ids["waiting"]!, until: { $0.status == .waiting }, what: "waiting for manager.approved")

        // A dead letter: a command the participant cannot read.
        try await bus.publish(
            OutgoingMessage(
                exchange: topology.commandsExchange, routingKey: "hotel.book", body: Array("{\"not\": \"a saga command\"".utf8),
                messageId: "console-fixture-malformed-1", contentType: "application/json", type: "hotel.book"))
        try await Task.sleep(for: .seconds(2))

        // The operator's fix: the failing compensation succeeds from now on.
        repaired.withLock { $0 = true }
        let data = try JSONSerialization.data(withJSONObject: ids, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: try requiredOut()))
    }

    static func requiredOut() throws -> String {
        guard let out = ProcessInfo.processInfo.environment["OUT"], !out.isEmpty else { throw FixtureError("set OUT") }
        return out
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
