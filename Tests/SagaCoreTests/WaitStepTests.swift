import Foundation
import SagaCore
import Testing

/// reserve, then a wait for "fraud.approved" (when amount > 1000, 1 h, compensate on timeout),
/// charge, ship (the pivot), then a wait for "delivered" (1 day, continue on timeout), close.
private let definition = try! SagaBuilder("order")
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .wait("fraud-review", for: "fraud.approved", timeout: .seconds(3600), when: .greaterThan("amount", 1000))
    .step("charge", action: "payment.charge", compensation: "payment.refund")
    .step("ship", action: "shipping.ship", options: .pivot)
    .wait("delivery", for: "delivered", timeout: .seconds(86_400), onTimeout: .continue)
    .step("close", action: "orders.close")
    .deadline(.seconds(7200))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_700_000_000)

@Suite("Wait steps and signals in the state machine")
struct WaitStepTests {
    private func completed(_ step: Int, _ state: SagaState, at now: Date = t0) -> SagaDecision {
        machine.apply(.stepCompleted(step: step, attempt: 1, patch: [:], startedAt: now), to: state, now: now)
    }

    private func signal(_ name: String, _ state: SagaState, payload: JSONObject = [:], at now: Date = t0) -> SagaDecision {
        machine.apply(.signalReceived(name: name, payload: payload, by: "alice"), to: state, now: now)
    }

    private func commands(_ decision: SagaDecision) -> [String] { decision.commands.map(\.command.command) }

    /// A large order that completed `reserve` and now waits for the fraud review.
    private func waiting() throws -> SagaState {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 5000], now: t0)
        return try #require(completed(0, start).state)
    }

    @Test func theBuilderRefusesBadWaitsWithWhatAndWhere() {
        func refused(_ builder: SagaBuilder, _ message: String) {
            #expect {
                try builder.build()
            } throws: { error in
                "\(error)".contains(message)
            }
        }
        let base = SagaBuilder("bad").step("a", action: "a.do", compensation: "a.undo")
        refused(base.wait("w", for: "", timeout: .seconds(1)), "step 2 'w' waits for a signal with an empty name")
        refused(base.wait("w", for: "s", timeout: .zero), "step 2 'w': the wait's timeout 0.0 seconds is not positive")
        refused(base.wait("w", for: "s", timeout: .seconds(1)).wait("v", for: "s", timeout: .seconds(1)), "as step 'w' does")
        refused(
            base.step("p", action: "p.do", options: .pivot).wait("w", for: "s", timeout: .seconds(1)),
            "waits after the pivot 'p' and compensates on timeout")
    }

    @Test func aWaitSendsNoCommandAndKeepsItsSignalInTheDocument() throws {
        #expect(!definition.commands.contains("fraud.approved"))
        #expect(definition.locate(command: "fraud.approved") == nil)
        #expect(definition.waitStep(for: "delivered") == 4)
        let rebuilt = try SagaDefinition(canonicalJSON: definition.canonicalJSON())
        #expect(rebuilt == definition)
        let json = String(decoding: definition.canonicalJSON(), as: UTF8.self)
        #expect(json.contains(#""wait":{"onTimeout":"continue","signal":"delivered","timeoutMilliseconds":86400000}"#))
    }

    @Test func reachingAWaitStopsTheSagaWithoutACommand() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 5000], now: t0)
        let decision = completed(0, start)
        let state = try #require(decision.state)
        #expect(state.status == .waiting && state.currentStep == 1)
        #expect(decision.commands.isEmpty)
        #expect(!state.status.isTerminal)
    }

    @Test func aWaitWhoseConditionDoesNotHoldIsSkipped() {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 50], now: t0)
        let decision = completed(0, start)
        #expect(decision.state?.status == .running && commands(decision) == ["payment.charge"])
    }

    @Test func theSignalMergesItsPayloadRecordsWhoSentItAndTheSagaGoesOn() throws {
        let state = try waiting()
        let later = t0.addingTimeInterval(60)
        let decision = signal("fraud.approved", state, payload: ["reviewer": "alice"], at: later)
        #expect(commands(decision) == ["payment.charge"])
        let next = try #require(decision.state)
        #expect(next.status == .running && next.currentStep == 2)
        #expect(next.payload["reviewer"] == "alice")
        let record = try #require(next.history.last)
        #expect(record.stepName == "fraud-review" && record.outcome == .completed && record.actor == "alice")
        #expect(record.reason == "signal 'fraud.approved'" && record.startedAt == t0 && record.finishedAt == later)
    }

    /// A signal kept for a later wait changes the waiting saga (its data, its history) but not
    /// when its current wait began: the wait still times out when it would have.
    @Test func aSignalForALaterWaitDoesNotPushTheCurrentWaitsTimeoutBack() throws {
        let state = try waiting()
        let until = try #require(machine.waiting(state)?.until)
        #expect(until == t0.addingTimeInterval(3600))
        let kept = try #require(signal("delivered", state, payload: ["early": true], at: t0.addingTimeInterval(1800)).state)
        #expect(kept.status == .waiting && kept.currentStep == 1 && kept.payload["early"] == true)
        #expect(kept.history.last?.reason == "signal 'delivered', before the saga reached the wait")
        #expect(kept.updatedAt == t0 && machine.waiting(kept)?.until == until)
        let expired = machine.apply(.waitExpired, to: kept, now: until.addingTimeInterval(1))
        #expect(expired.state?.status == .compensating, "\(expired)")
    }

    @Test func aSignalBeforeTheWaitIsKeptAndTheWaitCompletesWhenReached() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 5000], now: t0)
        let early = signal("fraud.approved", start, payload: ["approved": true])
        let kept = try #require(early.state)
        #expect(kept.status == .running && kept.currentStep == 0 && early.commands.isEmpty)
        #expect(kept.payload["approved"] == true)
        #expect(kept.history.last?.reason == "signal 'fraud.approved', before the saga reached the wait")
        // reserve completes: the wait is passed at once.
        let decision = completed(0, kept)
        #expect(decision.state?.status == .running && commands(decision) == ["payment.charge"])
        // The same signal again is ignored.
        guard case .ignored(let reason) = signal("fraud.approved", try #require(decision.state)) else {
            Issue.record("a second signal was applied")
            return
        }
        #expect(reason.contains("already ended (completed"))
    }

    @Test func anUnknownSignalIsRejectedWithTheSignalsTheSagaWaitsFor() throws {
        guard case .rejected(let reason) = signal("nope", try waiting()) else {
            Issue.record("an unknown signal was not rejected")
            return
        }
        #expect(reason.contains("waits for no signal named 'nope' (its signals: fraud.approved, delivered)"))
    }

    @Test func theTimeoutCompensatesAndALateSignalIsIgnored() throws {
        let state = try waiting()
        guard case .ignored(let early) = machine.apply(.waitExpired, to: state, now: t0.addingTimeInterval(3599)) else {
            Issue.record("the wait ended before its timeout")
            return
        }
        #expect(early.contains("waits for signal 'fraud.approved' until"))
        let expired = machine.apply(.waitExpired, to: state, now: t0.addingTimeInterval(3600))
        #expect(commands(expired) == ["inventory.release"])
        let compensating = try #require(expired.state)
        #expect(compensating.status == .compensating)
        #expect(compensating.failureReason == "step 'fraud-review': no signal 'fraud.approved' within 1 h")
        guard case .ignored(let late) = signal("fraud.approved", compensating) else {
            Issue.record("a late signal was applied")
            return
        }
        #expect(late.contains("already ended (failed)"))
    }

    @Test func aWaitThatContinuesOnTimeoutIsSkipped() throws {
        var (state, _) = machine.start(id: "s1", payload: ["amount": 50], now: t0)
        for step in [0, 2, 3] { state = try #require(completed(step, state).state) }
        #expect(state.status == .waiting && state.currentStep == 4)
        let expired = machine.apply(.waitExpired, to: state, now: t0.addingTimeInterval(86_400))
        #expect(commands(expired) == ["orders.close"])
        #expect(expired.state?.history.last?.outcome == .skipped)
        #expect(expired.state?.history.last?.reason == "no signal 'delivered' within 1 d: continued as declared")
    }

    @Test func operatorsAndTheReaperAroundAWait() throws {
        let state = try waiting()
        guard case .rejected(let retry) = machine.apply(.retryRequested(by: "ops", reason: nil), to: state, now: t0) else {
            Issue.record("a retry of a wait was accepted")
            return
        }
        #expect(retry.contains("waits for signal 'fraud.approved'; there is nothing to retry"))
        guard case .ignored = machine.apply(.foundStalled(maxReapAttempts: 3), to: state, now: t0) else {
            Issue.record("a waiting saga was treated as stalled")
            return
        }
        let compensate = machine.apply(.compensationRequested(by: "ops", reason: "cancelled"), to: state, now: t0)
        #expect(commands(compensate) == ["inventory.release"])
        let deadline = machine.apply(.deadlinePassed, to: state, now: t0)
        #expect(commands(deadline) == ["inventory.release"])
        // A step outcome never applies to a waiting saga.
        guard case .ignored = completed(1, state) else {
            Issue.record("a step outcome was applied to a waiting saga")
            return
        }
    }

    @Test func lifecycleEventsSayWhatTheSagaWaitsForAndWhenTheSignalCame() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 5000], now: t0)
        let state = try waiting()
        let events = SagaLifecycleEvent.events(
            of: .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), from: start, to: state, version: 2, definition: definition,
            at: t0)
        #expect(events.map(\.kind) == [.stepCompleted, .waiting])
        #expect(events.last?.reason == "waits for signal 'fraud.approved' until 2023-11-14T23:13:20Z")
        let signalled = try #require(signal("fraud.approved", state).state)
        let signalEvents = SagaLifecycleEvent.events(
            of: .signalReceived(name: "fraud.approved", payload: [:], by: "alice"), from: state, to: signalled, version: 3,
            definition: definition, at: t0)
        #expect(signalEvents.map(\.kind) == [.stepCompleted])
        #expect(signalEvents.first?.actor == "alice" && signalEvents.first?.stepName == "fraud-review")
    }

    @Test func aSagaThatStartsWithAWaitWaitsFromItsStart() throws {
        let first = try SagaBuilder("approval").wait("approve", for: "approved", timeout: .seconds(60)).step("do", action: "x.do").build()
        let start = SagaStateMachine(definition: first).begin(id: "s", payload: [:], now: t0)
        #expect(start.state.status == .waiting && start.commands.isEmpty)
        #expect(SagaLifecycleEvent.startEvents(start.state, definition: first, at: t0).map(\.kind) == [.started, .waiting])
    }
}
