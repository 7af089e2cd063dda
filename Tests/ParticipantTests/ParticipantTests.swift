import Configuration
import CoreMetrics
import Foundation
import InMemoryLogging
import Logging
import MetricsTestKit
import Synchronization
import Testing

@testable import Participant

/// Choreography semantics on the in-memory bus and store (fast, deterministic). The same
/// scenarios run against RabbitMQ with SQLite and PostgreSQL in the integration suite.
@Suite("Participant runtime (in-memory bus and store)", .timeLimit(.minutes(1)))
struct ParticipantTests {
    let bus = InMemoryBus()
    let store = InMemorySagaStore()
    let ledger = Ledger()

    @Test func threeStepSagaCompletes() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-1", "amount": 30])
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .completed)
        #expect(final.payload["reservationId"] == .string("r-\(final.id)"))
        #expect(final.payload["chargeId"] == "c-o-1")
        #expect(final.payload["trackingId"] == "t-1")
        #expect(ledger.effects(of: final.id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
        #expect(final.history.map(\.stepName) == ["reserve-stock", "charge-card", "ship"])
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10).isEmpty)
    }

    @Test func declinedPaymentReleasesStockAndShipsNothing() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-2", "amount": 30, "declinePayment": true])
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)
        #expect(final.failureReason == "step 'charge-card' failed: card declined")
        #expect(ledger.effects(of: final.id) == ["inventory.reserve", "inventory.release"])
        #expect(
            final.history.map { "\($0.stepName)/\($0.phase.rawValue)/\($0.outcome.rawValue)" } == [
                "reserve-stock/action/completed", "charge-card/action/failed", "reserve-stock/compensation/completed",
            ])
    }

    @Test func failuresAfterThePivotAreRetriedForwardThroughTheDelayQueue() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-3", "amount": 30, "failShippingTimes": 2])
            return try await manager.outcome(of: id, timeout: .seconds(20))
        }
        #expect(final.status == .completed)
        let shipping = final.history.filter { $0.stepName == "ship" }
        #expect(shipping.map(\.outcome) == [.retrying, .retrying, .completed])
        #expect(shipping.map(\.attempt) == [1, 2, 3])
        // Each retry waited at least the one-second delay level.
        #expect(shipping[2].startedAt.timeIntervalSince(shipping[0].finishedAt) >= 2.0)
    }

    @Test func aCompensationThatKeepsFailingLeavesTheSagaNeedingAttention() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            // A saga waiting at the charge step (its command lost), compensated by an operator:
            // the refund fails on both attempts its policy allows.
            var (state, _) = SagaStateMachine(definition: orderSaga).start(
                id: "stuck-1", payload: ["orderId": "o-4", "amount": 1, "failRefundAlways": true], now: Date())
            state.currentStep = 1
            _ = try await store.create(state, outbox: [])
            try await manager.compensate("stuck-1")
            return try await manager.outcome(of: "stuck-1", timeout: .seconds(20))
        }
        #expect(final.status == .needsAttention)
        #expect(
            final.failureReason
                == "compensation of step 'charge-card' failed 2 time(s): refund service down (compensating because: compensation requested by an operator (compensation requested by operator))"
        )
        #expect(final.history.filter { $0.phase == .compensation }.map(\.outcome) == [.retrying, .failed])
    }

    /// An operator's log shows what needs a person: a saga that completes or is compensated by a
    /// business decision logs nothing above notice; a thrown error is a warning followed by what
    /// comes of it (a retry); a saga that needs attention logs an error.
    @Test func logLevelsRiseOnlyForWhatNeedsAPerson() async throws {
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .trace
            return handler
        }()
        let logger = Logger(label: "participants", factory: { _ in logs })
        let ids = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store, logger: logger) { manager in
            let completed = try await manager.start("order", payload: ["orderId": "o-l1", "amount": 30])
            let declined = try await manager.start("order", payload: ["orderId": "o-l2", "amount": 30, "declinePayment": true])
            let retried = try await manager.start("order", payload: ["orderId": "o-l3", "amount": 30, "failShippingTimes": 1])
            var (state, _) = SagaStateMachine(definition: orderSaga).start(
                id: "o-l4-stuck", payload: ["orderId": "o-l4", "amount": 1, "failRefundAlways": true], now: Date())
            state.currentStep = 1
            _ = try await store.create(state, outbox: [])
            try await manager.compensate(state.id)
            for id in [completed, declined, retried, state.id] { _ = try await manager.outcome(of: id, timeout: .seconds(20)) }
            return (completed: completed, declined: declined, retried: retried, stuck: state.id)
        }
        func entries(of id: SagaID) -> [InMemoryLogHandler.Entry] {
            logs.entries.filter { $0.metadata["saga.id"].map { "\($0)" } == id }
        }
        func describe(_ entries: [InMemoryLogHandler.Entry]) -> String {
            entries.map { "\($0.level) \($0.message)" }.joined(separator: "\n")
        }
        for id in [ids.completed, ids.declined] {
            let lines = entries(of: id)
            #expect(!lines.isEmpty && lines.allSatisfy { $0.level <= .notice }, "saga \(id):\n\(describe(lines))")
        }
        // (A loaded machine may add "ignoring a stale or duplicate command" lines: the outbox relay
        // re-sent a command not yet marked sent, 0.5 s after it was stored. Harmless, at info.)
        let retried = entries(of: ids.retried).filter { $0.level >= .info }.map { "\($0.level) \($0.message)" }
            .filter { $0 != "info ignoring a stale or duplicate command" }
        #expect(
            retried.count == 4 && retried[1] == "warning handler failed: carrier unavailable"
                && retried[2].hasPrefix("info step 'ship' will be retried in ") && retried[2].hasSuffix(" (attempt 2)")
                && retried[3] == "info saga completed", "\(retried)")
        let compensating = entries(of: ids.declined).filter { "\($0.message)".hasPrefix("saga is compensating") }
        #expect(compensating.map(\.level) == [.notice], "\(describe(entries(of: ids.declined)))")
        let stuck = entries(of: ids.stuck)
        #expect(
            stuck.contains { $0.level == .error && "\($0.message)".hasPrefix("saga needs attention") }, "\(describe(stuck))")
    }

    @Test func staleAndDuplicateCommandsAreAcknowledgedIgnoredAndCounted() async throws {
        // A service name of its own, so that the stale-message counter belongs to this test.
        var handlers = orderHandlers(ledger: ledger)
        handlers["inventory-stale"] = handlers.removeValue(forKey: "inventory")
        let metrics = TestMetricsBackend.shared
        let final = try await withParticipants(handlers, bus: bus, store: store) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-5", "amount": 30])
            let final = try await manager.outcome(of: id, timeout: .seconds(60))
            // Deliver the first command again, twice: the saga is completed, nothing runs.
            let duplicate = SagaCommand(
                sagaID: id, sagaName: "order", command: "inventory.reserve", step: 0, stepName: "reserve-stock", phase: .action, attempt: 1)
            for _ in 0..<2 {
                try await bus.publish(
                    OutgoingMessage(
                        exchange: testTopology.commandsExchange, routingKey: "inventory.reserve",
                        body: Array(try JSONCoding.encode(duplicate)), contentType: "application/json"))
            }
            try await waitUntil {
                (try? metrics.expectCounter("saga_stale_messages_total", [("service", "inventory-stale")]).totalValue) == 2
            }
            return final
        }
        #expect(ledger.calls("inventory.reserve", of: final.id) == 1)
        #expect(try await store.load(final.id).version == final.version)
    }

    @Test(arguments: [
        (
            "not json", "inventory.reserve", "application/json",
            "body is not a saga command (not valid JSON: unexpected 'n', a value was expected at byte 0)"
        ),
        ("{\"sagaID\":\"x\"}", "inventory.reserve", "application/json", "body is not a saga command (missing key 'sagaName')"),
        ("{}", "inventory.reserve", "text/plain", "content type 'text/plain' is not application/json"),
        (
            #"{"sagaID":"nope","sagaName":"order","command":"inventory.reserve","step":0,"stepName":"reserve-stock","phase":"action","attempt":1}"#,
            "inventory.reserve", "application/json", "no saga with id nope"
        ),
        (
            #"{"sagaID":"x","sagaName":"nope","command":"inventory.reserve","step":0,"stepName":"reserve-stock","phase":"action","attempt":1}"#,
            "inventory.reserve", "application/json", "no saga definition named 'nope'"
        ),
        (
            #"{"sagaID":"x","sagaName":"order","command":"inventory.reserve","step":1,"stepName":"reserve-stock","phase":"action","attempt":1}"#,
            "inventory.reserve", "application/json", "is not step 2 'charge-card' action of saga definition 'order'"
        ),
        // A saga id that would forge a log line and colour the terminal: refused, quoted escaped.
        (
            #"{"sagaID":"x\n05:00:00.000 ERROR payment FAKE\u001b[31m","sagaName":"order","command":"inventory.reserve","step":0,"stepName":"reserve-stock","phase":"action","attempt":1}"#,
            "inventory.reserve", "application/json",
            #"sagaID 'x\n05:00:00.000 ERROR payment FAKE\u{1B}[31m' contains control characters"#
        ),
        // A content type with an escape sequence: the reason quotes it escaped.
        ("{}", "inventory.reserve", "text/\u{1B}[2J", #"content type 'text/\u{1B}[2J' is not application/json"#),
    ])
    func badMessagesAreDeadLetteredWithTheirReason(body: String, routingKey: String, contentType: String, reason: String) async throws {
        // Saga "x" exists (at its first step), so that a command naming it gets as far as the
        // checks against its definition.
        let (existing, _) = SagaStateMachine(definition: orderSaga).start(
            id: "x", payload: [:], context: [SagaTopology.contextKey: testTopology.prefix], now: Date())
        _ = try await store.create(existing, outbox: [])
        let letters = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            try await bus.publish(
                OutgoingMessage(
                    exchange: testTopology.commandsExchange, routingKey: routingKey, body: Array(body.utf8), contentType: contentType))
            // A saga keeps flowing meanwhile.
            let id = try await manager.start("order", payload: ["orderId": "o-6", "amount": 1])
            #expect(try await manager.outcome(of: id, timeout: .seconds(60)).status == .completed)
            return try await collect(queue: testTopology.deadLetterQueue, count: 1)
        }
        let letter = try #require(letters.first)
        #expect(
            letter.headers[SagaHeaders.deadLetterReason]?.contains(reason) == true,
            "reason was \(letter.headers[SagaHeaders.deadLetterReason] ?? "none")")
        #expect(letter.headers[SagaHeaders.deadLetterQueue] == testTopology.queue(forService: "inventory"))
        #expect(letter.headers[SagaHeaders.deadLetterRoutingKey] == routingKey)
        #expect(letter.headers[SagaHeaders.deadLetterService] == "inventory")
        #expect(letter.body == Array(body.utf8))
    }

    @Test func aCommandWithoutAHandlerInThisServiceIsDeadLettered() async throws {
        // Published straight to the inventory queue through the default exchange.
        let queue = testTopology.queue(forService: "inventory")
        let body =
            #"{"sagaID":"x","sagaName":"order","command":"payment.charge","step":1,"stepName":"charge-card","phase":"action","attempt":1}"#
        let letters = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { _ in
            try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array(body.utf8), contentType: "application/json"))
            return try await collect(queue: testTopology.deadLetterQueue, count: 1)
        }
        #expect(letters.first?.headers[SagaHeaders.deadLetterReason] == "service 'inventory' has no handler for command 'payment.charge'")
        #expect(letters.first?.headers[SagaHeaders.deadLetterExchange] == "")
        #expect(letters.first?.headers[SagaHeaders.deadLetterRoutingKey] == queue)
    }

    @Test func anOversizedBodyIsDeadLettered() async throws {
        let letters = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { _ in
            try await bus.publish(
                OutgoingMessage(
                    exchange: testTopology.commandsExchange, routingKey: "payment.charge", body: Array(repeating: 0x20, count: 70_000),
                    contentType: "application/json"))
            return try await collect(queue: testTopology.deadLetterQueue, count: 1)
        }
        #expect(letters.first?.headers[SagaHeaders.deadLetterReason] == "body of 70000 bytes exceeds the limit of 65536 bytes")
    }

    /// A saga started with the id of one that was purged is another incarnation: its handlers
    /// get other idempotency keys, so a service that applied the first saga's effects applies
    /// the new saga's too (with the same keys it would take them for done and skip them).
    @Test func aSagaReusingAPurgedIdGetsItsOwnIdempotencyKeys() async throws {
        let keys = Mutex<[String]>([])
        var handlers = orderHandlers(ledger: ledger)
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            keys.withLock { $0.append(context.idempotencyKey) }
            ledger.record(context)
            try await context.completeStep()
        }
        handlers["inventory"] = inventory
        try await withParticipants(handlers, bus: bus, store: store) { manager in
            _ = try await manager.start("order", payload: ["orderId": "o-31", "amount": 1], id: "reused-1")
            #expect(try await manager.outcome(of: "reused-1", timeout: .seconds(30)).status == .completed)
            // Purged once its last messages are marked sent (a moment after they are published).
            var purged = 0
            for _ in 0..<100 where purged == 0 {
                purged = try await store.purgeFinished(before: Date().addingTimeInterval(60), topology: nil, limit: 10)
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(purged == 1)
            _ = try await manager.start("order", payload: ["orderId": "o-31", "amount": 1], id: "reused-1")
            #expect(try await manager.outcome(of: "reused-1", timeout: .seconds(30)).status == .completed)
        }
        let seen = keys.withLock { $0 }
        #expect(seen.count == 2 && Set(seen).count == 2, "\(seen)")
        #expect(seen.allSatisfy { $0.hasPrefix("reused-1:reserve-stock:action:") }, "\(seen)")
        #expect(ledger.effectCount(of: "reused-1") == 6, "both incarnations' three effects")
    }

    @Test func theReaperResendsTheCommandOfAStalledSaga() async throws {
        let reaper = ReaperConfiguration(pollInterval: .milliseconds(200), stalledThreshold: .milliseconds(300), maxReapAttempts: 3)
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store, reaper: reaper) { manager in
            // A saga stored without its first command (as if it was lost): only the reaper can
            // move it.
            let (state, _) = SagaStateMachine(definition: orderSaga).start(
                id: "lost-1", payload: ["orderId": "o-7", "amount": 1], now: Date())
            _ = try await store.create(state, outbox: [])
            return try await manager.outcome(of: "lost-1", timeout: .seconds(15))
        }
        #expect(final.status == .completed)
        #expect(final.history.first?.outcome == .resent)
    }

    @Test func theReaperEndsExpiredWaitsAndCompensatesAWaitingSagaPastItsDeadline() async throws {
        // reserve, then a wait of an hour, in a saga with a deadline of a minute.
        let definition = try SagaBuilder("approval")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .wait("approve", for: "approved", timeout: .seconds(3600))
            .step("ship", action: "shipping.ship")
            .deadline(.seconds(60))
            .build()
        let machine = SagaStateMachine(definition: definition)
        let created = Date().addingTimeInterval(-120)
        let (start, _) = machine.start(id: "late-wait", payload: [:], context: [SagaTopology.contextKey: testTopology.prefix], now: created)
        // It began to wait just now: its wait has not timed out, its deadline has passed.
        var waiting = try #require(
            machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: created), to: start, now: Date()).state)
        waiting.version = 1
        #expect(waiting.status == .waiting)
        _ = try await store.create(waiting, outbox: [])
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(stalledThreshold: .seconds(1)), definitions: try SagaDefinitionRegistry([definition]),
            bus: bus, store: store, topology: testTopology, logger: quietTestLogger
        )
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        let changed = try await reaper.reapOnce()
        #expect(changed.map(\.id) == ["late-wait"])
        let compensating = try await store.load("late-wait")
        #expect(compensating.status == .compensating && compensating.failureReason?.hasPrefix("deadline passed") == true)
    }

    /// Every timed-out wait ends at the next pass, however many sagas of the same definition
    /// still wait within their (longer) timeout: they take no place in the reaper's batch.
    @Test func theReaperEndsEveryTimedOutWaitWhateverTheSagasStillWithinTheirs() async throws {
        // A review of a day, then a bank confirmation of two hours.
        let definition = try SagaBuilder("payout")
            .step("reserve", action: "ledger.hold", compensation: "ledger.release")
            .wait("review", for: "review.approved", timeout: .seconds(86_400))
            .wait("bank", for: "bank.confirmed", timeout: .seconds(7200))
            .step("pay", action: "ledger.pay")
            .build()
        let machine = SagaStateMachine(definition: definition)
        let now = Date()
        func waiting(_ id: String, at step: Int, sinceSecondsAgo seconds: Double) async throws {
            var state = machine.start(id: id, payload: [:], context: [SagaTopology.contextKey: testTopology.prefix], now: now).0
            state.status = .waiting
            state.currentStep = step
            state.updatedAt = now.addingTimeInterval(-seconds)
            _ = try await store.create(state, outbox: [])
        }
        // Two and a half hours into their day of review: newer than the bank waits that timed out.
        for index in 0..<3 { try await waiting("payout-review-\(index)", at: 1, sinceSecondsAgo: 9000) }
        for index in 0..<2 { try await waiting("payout-bank-\(index)", at: 2, sinceSecondsAgo: 10_800) }
        try await bus.declare(testTopology.topology(forService: "ledger", commands: ["ledger.hold", "ledger.release", "ledger.pay"]))
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(batchSize: 2), definitions: try SagaDefinitionRegistry([definition]), bus: bus,
            store: store, topology: testTopology, logger: quietTestLogger)
        #expect(Set(try await reaper.reapOnce().map(\.id)) == ["payout-bank-0", "payout-bank-1"])
        for index in 0..<2 { #expect(try await store.load("payout-bank-\(index)").status == .compensating) }
        for index in 0..<3 { #expect(try await store.load("payout-review-\(index)").status == .waiting) }
        #expect(try await reaper.reapOnce().isEmpty, "nothing more to do")
    }

    /// A saga stalled because its service is down (no live process handles its command, as the
    /// participants' presence records say) waits for the service instead of needing attention
    /// once the re-sends are used up; with a live process that does not make it progress, it
    /// needs attention as before.
    @Test func aSagaWhoseServiceIsDownWaitsForItInsteadOfNeedingAttention() async throws {
        var (stalled, _) = SagaStateMachine(definition: orderSaga).start(
            id: "down-1", payload: ["orderId": "o-21", "amount": 1], context: [SagaTopology.contextKey: testTopology.prefix],
            now: Date().addingTimeInterval(-60))
        stalled.reapAttempts = 1
        _ = try await store.create(stalled, outbox: [])
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve"]))
        func report(_ service: String, commands: [String], lastSeen: Date) async throws {
            try await store.recordParticipant(
                ParticipantInstance(
                    topology: testTopology.prefix, service: service, instance: "\(service)-1", commands: commands,
                    startedAt: lastSeen.addingTimeInterval(-3600), lastSeen: lastSeen, reportInterval: .seconds(15)))
        }
        // inventory's only process stopped reporting ten minutes ago; payment is alive.
        try await report("inventory", commands: ["inventory.reserve"], lastSeen: Date().addingTimeInterval(-600))
        try await report("payment", commands: ["payment.charge"], lastSeen: Date())
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(stalledThreshold: .seconds(1), maxReapAttempts: 1), definitions: orderDefinitions, bus: bus,
            store: store, topology: testTopology, logger: quietTestLogger)
        #expect(try await reaper.reapOnce().map(\.id) == ["down-1"])
        let waiting = try await store.load("down-1")
        #expect(waiting.status == .running && waiting.reapAttempts == 2 && waiting.history.last?.outcome == .resent, "\(waiting)")

        // inventory is back, and the saga still does not move: it needs attention.
        // (A pass after the first one's lease, a poll interval, has ended.)
        let later = Date().addingTimeInterval(400)
        try await report("inventory", commands: ["inventory.reserve"], lastSeen: later)
        _ = try await reaper.reapOnce(now: later)
        #expect(try await store.load("down-1").status == .needsAttention)
    }

    /// A reaper re-sends the stalled sagas of its topology whatever their definition: one that
    /// only another service runs comes from the store. (It used to skip them while its claim
    /// leased them, keeping them from the reapers of the services that run them.)
    @Test func theReaperResendsStalledSagasOfADefinitionOnlyTheStoreKnows() async throws {
        let refund = try SagaBuilder("refund")
            .step("debit", action: "wallet.debit", compensation: "wallet.credit")
            .step("notify", action: "notify.send")
            .build()
        try await store.register(refund)
        let (stalled, _) = SagaStateMachine(definition: refund).start(
            id: "refund-stalled", payload: [:], context: [SagaTopology.contextKey: testTopology.prefix],
            now: Date().addingTimeInterval(-60))
        _ = try await store.create(stalled, outbox: [])
        try await bus.declare(testTopology.topology(forService: "wallet", commands: ["wallet.debit", "wallet.credit"]))
        // This process runs only the order saga.
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(stalledThreshold: .seconds(1)), definitions: orderDefinitions, bus: bus, store: store,
            topology: testTopology, logger: quietTestLogger)
        let changed = try await reaper.reapOnce()
        #expect(changed.map(\.id) == ["refund-stalled"])
        let resent = try await store.load("refund-stalled")
        #expect(resent.reapAttempts == 1 && resent.history.last?.outcome == .resent, "\(resent)")
    }

    /// A saga past its deadline whose command nobody takes (the step's service is down) is
    /// compensated at the reaper's next pass, not once it counts as stalled (15 minutes by
    /// default); one that reached its pivot has no deadline any more and is left to go forward.
    @Test func theReaperCompensatesARunningSagaPastItsDeadlineBeforeItIsStalled() async throws {
        let definition = try SagaBuilder("hold")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .step("ship", action: "shipping.ship", options: .pivot)
            .step("notify", action: "notify.send")
            .deadline(.seconds(60))
            .build()
        let machine = SagaStateMachine(definition: definition)
        let context = [SagaTopology.contextKey: testTopology.prefix]
        func saga(_ id: String, startedSecondsAgo: Double, completing steps: Int) throws -> SagaState {
            let started = Date().addingTimeInterval(-startedSecondsAgo)
            var state = machine.start(id: id, payload: [:], context: context, now: started).0
            for step in 0..<steps {
                state = try #require(
                    machine.apply(.stepCompleted(step: step, attempt: 1, patch: [:], startedAt: started), to: state, now: Date()).state)
            }
            state.version = 1
            return state
        }
        // Each moved a moment ago (none is stalled); two started two minutes ago.
        let late = try saga("hold-late", startedSecondsAgo: 120, completing: 1)
        let pastPivot = try saga("hold-past-pivot", startedSecondsAgo: 120, completing: 3)
        let inTime = try saga("hold-in-time", startedSecondsAgo: 10, completing: 1)
        #expect(late.deadline != nil && pastPivot.deadline == nil, "the deadline is cleared at the pivot")
        for state in [late, pastPivot, inTime] { _ = try await store.create(state, outbox: []) }
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        try await bus.declare(testTopology.topology(forService: "payment", commands: ["payment.charge", "payment.refund"]))
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(), definitions: try SagaDefinitionRegistry([definition]), bus: bus, store: store,
            topology: testTopology, logger: quietTestLogger)
        #expect(try await reaper.reapOnce().map(\.id) == ["hold-late"])
        let compensating = try await store.load("hold-late")
        #expect(compensating.status == .compensating && compensating.failureReason?.hasPrefix("deadline passed") == true)
        #expect(try await store.load("hold-past-pivot").status == .running)
        #expect(try await store.load("hold-in-time").status == .running)
        #expect(try await reaper.reapOnce().isEmpty, "nothing more to do")
    }

    /// The reaper runs in any participant: its lines name the command the saga waits for (whose
    /// service is the one to look at) and since when it made no progress.
    @Test func theReapersLinesNameTheCommandTheSagaWaitsFor() async throws {
        let (stuck, _) = SagaStateMachine(definition: orderSaga).start(
            id: "stuck-log-1", payload: ["orderId": "o-12", "amount": 1], context: [SagaTopology.contextKey: testTopology.prefix],
            now: Date().addingTimeInterval(-60))
        _ = try await store.create(stuck, outbox: [])
        try await SagaManager(definitions: orderDefinitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
            .declareTopology()
        try await bus.declare(testTopology.topology(forService: "inventory", commands: ["inventory.reserve"]))
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .info
            return handler
        }()
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(stalledThreshold: .seconds(1)), definitions: orderDefinitions, bus: bus, store: store,
            topology: testTopology, logger: Logger(label: "inventory", factory: { _ in logs }))
        #expect(try await reaper.reapOnce().count == 1)
        let line = logs.entries.first { "\($0.message)" == "re-sent 'inventory.reserve' to a stalled saga (re-send 1 of 3)" }
        #expect(line?.metadata["saga.waitingFor"].map { "\($0)" } == "inventory.reserve", "\(logs.entries)")
        #expect(line?.metadata["saga.stalledSince"].map { "\($0)" }?.hasSuffix("Z") == true, "\(String(describing: line))")
    }

    /// The reaper's line says what it did to a stalled saga and what to do next.
    @Test func theReapersLineSaysWhatItDid() {
        let state = SagaState(
            id: "s-1", name: "order", status: .running, currentStep: 0, attempt: 1, payload: [:], context: [:], history: [],
            reapAttempts: 3, createdAt: Date(), updatedAt: Date(), version: 1)
        var next = state
        next.status = .needsAttention
        #expect(
            SagaReaper.describe(next, from: state, after: .foundStalled(maxReapAttempts: 3), waitingFor: ["pay"], maxReapAttempts: 3)
                == "a stalled saga needs attention: 'pay' re-sent 3 times without progress; see why its service does not take it (saga show, saga services), then saga retry"
        )
        next.status = .running
        next.reapAttempts = 4
        #expect(
            SagaReaper.describe(next, from: state, after: .foundStalled(maxReapAttempts: .max), waitingFor: ["pay"], maxReapAttempts: .max)
                == "re-sent 'pay' to a stalled saga (no live process handles it yet)")
        next.status = .compensating
        #expect(
            SagaReaper.describe(next, from: state, after: .deadlinePassed, waitingFor: ["pay"], maxReapAttempts: 3)
                == "a stalled saga passed its deadline; it is compensating now")
    }

    @Test func theReaperLeavesSagasOfAnotherTopologyAlone() async throws {
        // Two deployments share one store: a saga started on another topology is not re-sent here.
        let (foreign, _) = SagaStateMachine(definition: orderSaga).start(
            id: "foreign-1", payload: ["orderId": "o-11", "amount": 1], context: [SagaTopology.contextKey: "elsewhere"],
            now: Date().addingTimeInterval(-60)
        )
        _ = try await store.create(foreign, outbox: [])
        let reaper = SagaReaper(
            configuration: ReaperConfiguration(stalledThreshold: .seconds(1)), definitions: orderDefinitions, bus: bus, store: store,
            topology: testTopology, logger: quietTestLogger
        )
        #expect(try await reaper.reapOnce().isEmpty)
        #expect(try await store.load("foreign-1").version == 1)
    }

    @Test func theOutboxRelayPublishesCommittedButUnsentCommands() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            // A saga whose first command was committed to the outbox but never published (the
            // starter died between the two).
            let (state, first) = SagaStateMachine(definition: orderSaga).start(
                id: "unsent-1", payload: ["orderId": "o-8", "amount": 1], now: Date())
            let command = first.command
            let message = OutboxMessage(
                id: command.messageID, sagaID: state.id, exchange: testTopology.commandsExchange, routingKey: command.command,
                body: Array(try JSONCoding.encode(command)), headers: [:], createdAt: Date().addingTimeInterval(-10)
            )
            _ = try await store.create(state, outbox: [message])
            return try await manager.outcome(of: "unsent-1", timeout: .seconds(60))
        }
        #expect(final.status == .completed)
    }

    @Test func manyConcurrentSagasAllFinishWithTwoCompetingInstancesPerService() async throws {
        let outcomes = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store, prefetch: 8, instances: 2) {
            manager in
            try await withThrowingTaskGroup(of: SagaState.self) { group in
                for index in 0..<60 {
                    group.addTask {
                        let id = try await manager.start(
                            "order", payload: ["orderId": .string("m-\(index)"), "amount": 1, "declinePayment": .bool(index % 3 == 0)])
                        return try await manager.outcome(of: id, timeout: .seconds(30))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        #expect(outcomes.count == 60)
        #expect(outcomes.filter { $0.status == .completed }.count == 40)
        #expect(outcomes.filter { $0.status == .compensated }.count == 20)
        for outcome in outcomes {
            let expected: Set<String> =
                outcome.status == .completed
                ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
            #expect(ledger.effects(of: outcome.id) == expected)
        }
    }

    @Test func aParticipantRunsNoMoreHandlersAtOnceThanItsLimitAndStillFinishesEverySaga() async throws {
        let probe = Mutex((running: 0, most: 0, open: false))
        var handlers = orderHandlers(ledger: ledger)
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            probe.withLock {
                $0.running += 1; $0.most = max($0.most, $0.running)
            }
            // Every handler waits until the test opens the gate, so that all twelve deliveries
            // are in the participant at once, however slowly the machine starts them.
            while !probe.withLock({ $0.open }) { try await Task.sleep(for: .milliseconds(5)) }
            probe.withLock { $0.running -= 1 }
            try await context.completeStep()
        }
        inventory.register("inventory.release") { context in try await context.completeCompensation() }
        handlers["inventory"] = inventory
        let outcomes = try await withParticipants(handlers, bus: bus, store: store, prefetch: 16, maxConcurrentHandlers: 3) { manager in
            var ids: [SagaID] = []
            for index in 0..<12 { ids.append(try await manager.start("order", payload: ["orderId": .string("l-\(index)"), "amount": 1])) }
            // Three handlers are waiting at the gate; give the other nine time to (wrongly) join them.
            let deadline = ContinuousClock.now + .seconds(20)
            while probe.withLock({ $0.running }) < 3, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            try await Task.sleep(for: .milliseconds(300))
            probe.withLock { $0.open = true }
            var outcomes: [SagaState] = []
            for id in ids { outcomes.append(try await manager.outcome(of: id, timeout: .seconds(30))) }
            return outcomes
        }
        #expect(outcomes.allSatisfy { $0.status == .completed })
        // Twelve commands were waiting at once; three handlers ran at a time.
        #expect(probe.withLock { $0.most } == 3)
        #expect(ParticipantConfiguration(service: "s", prefetch: 4, maxConcurrentHandlers: 64).handlerLimit == 4)
    }

    @Test func theHandlerLimitIsReadFromConfigurationAndAMalformedOneIsNamed() throws {
        func configuration(_ value: String?) throws -> ParticipantConfiguration {
            var values: [AbsoluteConfigKey: ConfigValue] = [:]
            if let value { values["max.concurrent.handlers"] = ConfigValue(stringLiteral: value) }
            return try ParticipantConfiguration(service: "s", reader: ConfigReader(provider: InMemoryProvider(values: values)))
        }
        #expect(try configuration(nil).maxConcurrentHandlers == 64)
        #expect(try configuration("8").maxConcurrentHandlers == 8)
        let error = try #require(throws: SagaError.self) { try configuration("0") }
        #expect(error.message.contains("max.concurrent.handlers"))
    }

    /// What a message says (its saga id, a reason quoting it) cannot start a forged line or send
    /// escape sequences to the terminal through the console log handler.
    @Test func aLogEventIsOneLineWhateverItsTextHolds() {
        var handler = ConsoleLogHandler(label: "payment", level: .info)
        handler.metadata = ["saga.id": "x\n05:00:00.000 ERROR payment FAKE\u{1B}[31m"]
        let line = handler.line(
            for: LogEvent(
                level: .warning, message: "dead-lettering: sagaID 'y\r\nFAKE'", metadata: ["queue": "q\u{1B}]0;title\u{7}"], source: nil,
                file: #fileID, function: #function, line: #line))
        #expect(line.hasSuffix("\n"))
        #expect(line.dropLast().allSatisfy { $0 != "\n" && $0 != "\r" && $0 != "\u{1B}" && $0 != "\u{7}" }, "\(line)")
        #expect(line.contains(#"saga.id=x\n05:00:00.000 ERROR payment FAKE\u{1B}[31m"#), "\(line)")
        #expect(line.contains(#"sagaID 'y\r\nFAKE'"#), "\(line)")
    }

    @Test func aSagaIdWithControlCharactersIsRefusedAtTheStart() async throws {
        try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            for id in ["", "o-1\nFAKE LINE", "o-2\u{1B}[31m", "o-3\u{202E}"] {
                await #expect(throws: SagaError.self, "id \(PrintableText.escaped(id))") {
                    try await manager.start("order", payload: ["orderId": "o", "amount": 1], id: id)
                }
            }
        }
    }

    @Test func startingTheSameSagaIdTwiceStartsItOnce() async throws {
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            try await manager.start("order", payload: ["orderId": "o-9", "amount": 1], id: "same-id")
            try await manager.start("order", payload: ["orderId": "o-9", "amount": 1], id: "same-id")
            return try await manager.outcome(of: "same-id", timeout: .seconds(60))
        }
        #expect(final.status == .completed)
        #expect(ledger.calls("inventory.reserve", of: "same-id") == 1)
    }

    @Test func handlersForCommandsOutsideEveryDefinitionAreRefusedAtStartup() async throws {
        var registry = SagaHandlerRegistry()
        registry.register("inventory.resrve") { _ in }
        let participant = SagaParticipant(
            configuration: ParticipantConfiguration(service: "typo", topology: testTopology), definitions: orderDefinitions,
            handlers: registry, bus: bus, store: store, logger: quietTestLogger
        )
        let error = await #expect(throws: SagaError.self) { try await participant.run() }
        #expect(error?.message.contains("inventory.resrve") == true)
    }

    /// The reaper's warning compares its threshold with the longest delay the policies really
    /// wait, not with a cap they never reach.
    @Test func theLongestRetryDelayIsTheOneAPolicyReaches() {
        let short = RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2)  // 1 s, 2 s (cap 60 s)
        #expect(SagaParticipant.longestDelay(short, forever: false) == .seconds(2))
        #expect(SagaParticipant.longestDelay(short, forever: true) == .seconds(60))
        #expect(SagaParticipant.longestDelay(.none, forever: false) == .zero)
        let flat = RetryPolicy(maxAttempts: 50, initialDelay: .seconds(1), multiplier: 1, maxDelay: .seconds(1))
        #expect(SagaParticipant.longestDelay(flat, forever: true) == .seconds(1))
        #expect(SagaParticipant.longestDelay(RetryPolicy(maxAttempts: .max), forever: false) == .seconds(60))
    }

    @Test func twoHandlersForOneCommandAreRefusedAtStartupNamingIt() async throws {
        var registry = SagaHandlerRegistry()
        registry.register("inventory.reserve") { _ in }
        registry.register("inventory.release") { _ in }
        registry.register("inventory.reserve") { _ in }
        let participant = SagaParticipant(
            configuration: ParticipantConfiguration(service: "twice", topology: testTopology), definitions: orderDefinitions,
            handlers: registry, bus: bus, store: store, logger: quietTestLogger
        )
        let error = await #expect(throws: SagaError.self) { try await participant.run() }
        #expect(error?.code == .duplicateHandler)
        #expect(error?.message.contains("more than once for command 'inventory.reserve'") == true)
    }

    @Test func mergedRegistriesKeepEveryHandlerAndReportACommandBothHandle() throws {
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { _ in }
        inventory.register("inventory.release") { _ in }
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { _ in }
        var all = inventory
        all.merge(payment)
        #expect(all.commands == ["inventory.release", "inventory.reserve", "payment.charge"])
        var twice = all
        twice.merge(inventory)
        let error = #expect(throws: SagaError.self) { try twice.validate(against: orderDefinitions) }
        #expect(error?.code == .duplicateHandler)
        #expect(error?.message.contains("'inventory.release', 'inventory.reserve'") == true, "\(String(describing: error))")
    }

    @Test func contextRefusesTheWrongCompletionCall() async throws {
        let seen = Mutex<String?>(nil)
        var handlers = orderHandlers(ledger: ledger)
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { context in
            do {
                try await context.completeCompensation()
            } catch {
                seen.withLock { $0 = "\(error)" }
            }
            try await context.completeStep()
        }
        inventory.register("inventory.release") { context in try await context.completeCompensation() }
        handlers["inventory"] = inventory
        let final = try await withParticipants(handlers, bus: bus, store: store) { manager in
            let id = try await manager.start("order", payload: ["orderId": "o-10", "amount": 1])
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .completed)
        #expect(seen.withLock { $0 }?.contains("completeCompensation() was called by the handler of 'inventory.reserve'") == true)
    }

    /// Consumes `count` messages from a queue and acknowledges them.
    private func collect(queue: String, count: Int) async throws -> [Delivery] {
        var collected: [Delivery] = []
        for try await delivery in try await bus.consume(queue: queue, prefetch: 10) {
            try await delivery.ack()
            collected.append(delivery)
            if collected.count == count { break }
        }
        return collected
    }
}

/// The process-wide metrics backend of the tests (bootstrapped once).
enum TestMetricsBackend {
    static let shared: TestMetrics = {
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        return metrics
    }()
}

/// Polls a condition until it holds (at most 10 s).
func waitUntil(_ condition: @Sendable () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while try await !condition() {
        if ContinuousClock.now > deadline { throw TestFailure("condition not met within 10 s") }
        try await Task.sleep(for: .milliseconds(20))
    }
}
