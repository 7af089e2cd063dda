import Foundation
import SagaTestSupport
import Synchronization
import Testing

@testable import Participant

/// Issue 15: the defects of the saga runtime, each shown on the in-memory bus and store.
@Suite("Core correctness at runtime (issue 15)", .timeLimit(.minutes(1)))
struct CoreCorrectnessRuntimeTests {
    let bus = InMemoryBus()
    let store = InMemorySagaStore()
    let ledger = Ledger()

    // MARK: - Defect 1: a timed-out step's own effect is compensated

    @Test func aTimedOutStepThatRanOutOfAttemptsIsCompensatedToo() async throws {
        let ledger = self.ledger
        var handlers = Self.recordingHandlers(ledger: ledger)
        // The charge applies its effect, then ignores cancellation and returns after the timeout.
        handlers["payment"]!.register("payment.charge") { context in
            ledger.record(context)
            await Task.detached { try? await Task.sleep(for: .milliseconds(600)) }.value
        }
        let final = try await runSagaParticipants(handlers, definitions: Self.timeoutDefinitions, bus: bus, store: store) { manager in
            let id = try await manager.start("timeout-order", payload: ["orderId": "o-1"])
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)
        #expect(ledger.effects(of: final.id) == ["inventory.reserve", "payment.charge", "payment.refund", "inventory.release"])
        #expect(
            final.history.map { "\($0.stepName)/\($0.phase.rawValue)/\($0.outcome.rawValue)" } == [
                "reserve/action/completed", "charge/action/failed", "charge/compensation/completed", "reserve/compensation/completed",
            ])
    }

    // MARK: - Defect 5: a discarded outcome is an error the handler sees

    @Test func completeStepThrowsWhenTheSagaMovedOnWhileTheHandlerRan() async throws {
        let ledger = self.ledger
        let started = Flag()
        let release = Flag()
        let reported = Mutex<String?>(nil)
        let decision = Mutex<DiscardedOutcome?>(nil)
        var handlers = Self.recordingHandlers(ledger: ledger)
        handlers["payment"]!.register("payment.charge") { context in
            ledger.record(context)
            started.set()
            await release.wait()
            do {
                try await context.completeStep(merging: ["chargeId": "c-1"])
                reported.withLock { $0 = "returned normally" }
            } catch let error as SagaError {
                reported.withLock { $0 = "\(error.code): \(error.message) (\(error.recoverySuggestion ?? ""))" }
                decision.withLock { $0 = context.discardedOutcome }
                throw error
            }
        }
        let final = try await runSagaParticipants(handlers, definitions: Self.timeoutDefinitions, bus: bus, store: store) { manager in
            let id = try await manager.start("timeout-order", payload: ["orderId": "o-2"])
            await started.wait()
            // An operator compensates the saga while the charge runs.
            _ = try await manager.compensate(id)
            release.set()
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)
        let text = try #require(reported.withLock { $0 })
        #expect(text.hasPrefix("outcomeDiscarded: "), "completeStep must throw outcomeDiscarded, got: \(text)")
        #expect(final.payload["chargeId"] == nil)
        if text.contains("the step timed out") {
            // On a loaded machine the step's 0.2 s timeout can claim the outcome before the
            // operator's compensation: a later attempt or the step's compensation owns the effect.
            #expect(decision.withLock { $0 } == .leaveTheEffect, "\(text)")
        } else {
            // The saga is compensating and the charge never counted: this run's effect is undone.
            #expect(decision.withLock { $0 } == .undoThisRun, "\(text)")
            #expect(text.contains("the step did not count and the saga is compensating: undo this run's effect"), "\(text)")
        }
    }

    // MARK: - Defect 6: after a version conflict an event is re-decided only if it still applies

    @Test func theReaperDoesNotResendASagaThatMovedDuringTheConflict() async throws {
        let engine = try await Self.engine(bus: bus, store: store)
        let stalled = try await Self.startSaga(engine: engine, store: store, id: "moved-1")
        // Another instance moves the saga on after the reaper loaded it.
        _ = try await engine.advance(
            stalled.id, from: stalled, event: .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: Date()), logger: quietTestLogger)
        let outcome = try await engine.advance(stalled.id, from: stalled, event: .foundStalled(maxReapAttempts: 3), logger: quietTestLogger)
        guard case .ignored = outcome else {
            Issue.record("a saga that moved must not be re-sent, got \(outcome)")
            return
        }
        let now = try await store.load(stalled.id)
        #expect(now.reapAttempts == 0 && now.currentStep == 1 && now.attempt == 1)
        #expect(!now.history.contains { $0.outcome == .resent })
    }

    @Test func anOperatorsRetryOfStepKDoesNotBecomeAttemptTwoOfTheNextStep() async throws {
        let engine = try await Self.engine(bus: bus, store: store)
        let seen = try await Self.startSaga(engine: engine, store: store, id: "moved-2")
        _ = try await engine.advance(
            seen.id, from: seen, event: .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: Date()), logger: quietTestLogger)
        let outcome = try await engine.advance(
            seen.id, from: seen, event: .retryRequested(by: "test", reason: nil), logger: quietTestLogger)
        guard case .ignored = outcome else {
            Issue.record("a retry aimed at step 0 must not apply to step 1, got \(outcome)")
            return
        }
        let now = try await store.load(seen.id)
        #expect(now.currentStep == 1 && now.attempt == 1)
    }

    @Test func aRetryStillAppliesAfterAConflictThatLeftTheSagaWhereItWas() async throws {
        let engine = try await Self.engine(bus: bus, store: store)
        let seen = try await Self.startSaga(engine: engine, store: store, id: "same-1")
        // The reaper re-sends the current command (same step and attempt): the retry still fits.
        _ = try await engine.advance(seen.id, from: seen, event: .foundStalled(maxReapAttempts: 3), logger: quietTestLogger)
        let outcome = try await engine.advance(
            seen.id, from: seen, event: .retryRequested(by: "test", reason: nil), logger: quietTestLogger)
        guard case .committed(let state) = outcome else {
            Issue.record("the retry must apply, got \(outcome)")
            return
        }
        #expect(state.currentStep == 0 && state.attempt == 2)
    }

    // MARK: - Defect 4: ReaperConfiguration is validated in the Swift API

    @Test(arguments: [
        ReaperConfiguration(pollInterval: .zero), ReaperConfiguration(pollInterval: .seconds(-1)),
        ReaperConfiguration(stalledThreshold: .zero), ReaperConfiguration(stalledThreshold: .seconds(-5)),
        ReaperConfiguration(maxReapAttempts: 0), ReaperConfiguration(maxReapAttempts: -1),
        ReaperConfiguration(batchSize: 0), ReaperConfiguration(batchSize: -3),
    ])
    func reaperConfigurationOutOfRangeIsRefused(_ configuration: ReaperConfiguration) async throws {
        #expect(throws: SagaError.self) { try configuration.validate() }
        let reaper = SagaReaper(
            configuration: configuration, definitions: orderDefinitions, bus: bus, store: store, logger: quietTestLogger)
        await #expect(throws: SagaError.self) { try await reaper.run() }
        let participant = SagaParticipant(
            configuration: ParticipantConfiguration(service: "inventory", topology: testTopology, reaper: configuration),
            definitions: orderDefinitions, handlers: orderHandlers(ledger: ledger)["inventory"]!, bus: bus, store: store,
            logger: quietTestLogger)
        await #expect(throws: SagaError.self) { try await participant.run() }
        #expect(throws: Never.self) { try ReaperConfiguration().validate() }
    }

    // MARK: - Defect 7: start returns once the saga is stored, even when the publish fails

    @Test func startReturnsTheIdWhenTheFirstPublishFailsAndTheRelaySendsItLater() async throws {
        // No service queue is bound yet: the first command is unroutable.
        let manager = SagaManager(definitions: orderDefinitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
        let id = try await manager.start("order", payload: ["orderId": "o-7", "amount": 30])
        let stored = try await store.load(id)
        #expect(stored.status == .running && stored.currentStep == 0)
        #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10).map(\.sagaID) == [id])
        // Participants come up: the outbox relay sends the command and the saga runs.
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: bus, store: store) { manager in
            try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .completed)
        // Several participants' relays may publish the row at once (a handler may run more than
        // once); the effect is applied once per idempotency key and the outcome recorded once.
        #expect(ledger.calls("inventory.reserve", of: id) >= 1)
        #expect(ledger.effects(of: id) == ["inventory.reserve", "payment.charge", "shipping.ship"])
        #expect(final.history.filter { $0.stepName == "reserve-stock" }.count == 1)
    }

    // MARK: - Fixtures

    /// reserve (released) → charge (200 ms timeout, one attempt; refunded) → ship (the pivot).
    static let timeoutDefinitions: SagaDefinitionRegistry = {
        let definition = try! SagaBuilder("timeout-order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step(
                "charge", action: "payment.charge", compensation: "payment.refund",
                options: StepOptions(retry: RetryPolicy(maxAttempts: 1), timeout: .milliseconds(200))
            )
            .step("ship", action: "shipping.ship", options: .pivot)
            .compensationRetry(RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1), maxDelay: .seconds(1)))
            .build()
        return try! SagaDefinitionRegistry([definition])
    }()

    /// Handlers that record their effect and succeed.
    static func recordingHandlers(ledger: Ledger) -> [String: SagaHandlerRegistry] {
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { ledger.record($0) }
        inventory.register("inventory.release") { ledger.record($0) }
        var payment = SagaHandlerRegistry()
        payment.register("payment.refund") { ledger.record($0) }
        var shipping = SagaHandlerRegistry()
        shipping.register("shipping.ship") { ledger.record($0) }
        return ["inventory": inventory, "payment": payment, "shipping": shipping]
    }

    /// An engine on the order saga whose queues are bound (publishes succeed).
    static func engine(bus: InMemoryBus, store: InMemorySagaStore) async throws -> SagaEngine {
        try await bus.declare(testTopology.shared)
        for (service, commands) in TestSagas.commandsByService {
            try await bus.declare(testTopology.topology(forService: service, commands: commands))
        }
        return SagaEngine(store: store, bus: bus, definitions: orderDefinitions, topology: testTopology)
    }

    /// Stores a new order saga and returns its state.
    static func startSaga(engine: SagaEngine, store: InMemorySagaStore, id: SagaID) async throws -> SagaState {
        let (state, _) = SagaStateMachine(definition: orderSaga).start(id: id, payload: ["orderId": "o", "amount": 1], now: Date())
        return try await store.create(state, outbox: []).state
    }
}

/// A one-shot signal between a test and a handler.
final class Flag: Sendable {
    private let state = Mutex<(set: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func set() {
        let waiters = state.withLock { state in
            state.set = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state in
                if state.set { return true }
                state.waiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }
}

/// Runs one participant per service for `handlers` with `definitions` while `body` runs.
func runSagaParticipants<T: Sendable>(
    _ handlers: [String: SagaHandlerRegistry], definitions: SagaDefinitionRegistry, bus: any MessageBus, store: any SagaStore,
    body: @Sendable (SagaManager) async throws -> T
) async throws -> T {
    let manager = SagaManager(definitions: definitions, bus: bus, store: store, topology: testTopology, logger: quietTestLogger)
    try await manager.declareTopology()
    for (service, registry) in handlers {
        try await bus.declare(testTopology.topology(forService: service, commands: registry.commands))
    }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        for (service, registry) in handlers {
            let participant = SagaParticipant(
                configuration: ParticipantConfiguration(
                    service: service, topology: testTopology, outboxPollInterval: .milliseconds(200),
                    outboxGracePeriod: .milliseconds(500)),
                definitions: definitions, handlers: registry, bus: bus, store: store, logger: quietTestLogger)
            group.addTask { try await participant.run() }
        }
        let result = try await body(manager)
        group.cancelAll()
        return result
    }
}

@Suite("Delay levels (issue 15)")
struct DelayLevelTests {
    @Test func delaysRoundUpToTheNextLevelAndLongerOnesAreShortenedToTheLargest() {
        let topology = SagaTopology()
        #expect(topology.delayLevel(for: .milliseconds(300)) == 1)
        #expect(topology.delayLevel(for: .seconds(3)) == 5)
        #expect(topology.delayLevel(for: .seconds(3600)) == 3600)
        // Nothing to round up to: the largest level, as documented.
        #expect(topology.delayLevel(for: .seconds(7200)) == 3600)
    }
}
