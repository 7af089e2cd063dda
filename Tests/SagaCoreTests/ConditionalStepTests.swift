import Foundation
import SagaCore
import Testing

/// a, b (when amount > 1000), c (when gift is true), d — all compensated —, the pivot p, then f
/// (when email exists).
private let definition = try! SagaBuilder("order")
    .step("a", action: "a.do", compensation: "a.undo")
    .step("b", action: "b.do", compensation: "b.undo", when: .greaterThan("amount", 1000))
    .step("c", action: "c.do", compensation: "c.undo", when: .isTrue("gift"))
    .step("d", action: "d.do", compensation: "d.undo", options: StepOptions(retry: .none))
    .step("p", action: "p.do", options: .pivot)
    .step("f", action: "f.do", when: .exists("email"))
    .compensationRetry(RetryPolicy(maxAttempts: 3))
    .deadline(.seconds(60))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_700_000_000)

@Suite("Conditional steps in the state machine")
struct ConditionalStepTests {
    private func completed(_ step: Int, _ state: SagaState, attempt: Int = 1, patch: JSONObject = [:]) -> SagaDecision {
        machine.apply(.stepCompleted(step: step, attempt: attempt, patch: patch, startedAt: t0), to: state, now: t0)
    }

    /// Starts with `payload` and completes every step the saga sends until it reaches `step`.
    private func state(_ payload: JSONObject, runningUpTo step: Int) -> SagaState {
        var (state, _) = machine.start(id: "s1", payload: payload, now: t0)
        while state.currentStep < step, state.status == .running {
            state = completed(state.currentStep, state).state!
        }
        return state
    }

    @Test func aStepWhoseConditionIsFalseIsSkippedWithTheConditionInTheHistory() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 500, "gift": true], now: t0)
        let decision = completed(0, start)
        let state = try #require(decision.state)
        #expect(state.status == .running && state.currentStep == 2 && state.attempt == 1)
        #expect(decision.commands.map(\.command.command) == ["c.do"])
        let skipped = try #require(state.history.last)
        #expect(skipped.step == 1 && skipped.stepName == "b" && skipped.outcome == .skipped && skipped.attempt == 0)
        #expect(skipped.reason == "condition not met: amount > 1000")
        #expect(state.wasSkipped(1) && !state.wasSkipped(0) && !state.wasSkipped(2))
    }

    @Test func aStepWhoseConditionHoldsRuns() {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 1500], now: t0)
        let decision = completed(0, start)
        #expect(decision.state?.currentStep == 1)
        #expect(decision.commands.map(\.command.command) == ["b.do"])
        #expect(decision.state?.history.map(\.outcome) == [.completed])
    }

    @Test func theConditionSeesThePatchesOfTheStepsBefore() {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 500], now: t0)
        // a raises the amount (a surcharge): b now applies.
        let decision = completed(0, start, patch: ["amount": 1200])
        #expect(decision.commands.map(\.command.command) == ["b.do"])
    }

    @Test func severalStepsAreSkippedInARow() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 500], now: t0)
        let decision = completed(0, start)
        let state = try #require(decision.state)
        #expect(state.currentStep == 3)
        #expect(decision.commands.map(\.command.command) == ["d.do"])
        #expect(state.history.map(\.stepName) == ["a", "b", "c"])
        #expect(state.history.map(\.outcome) == [.completed, .skipped, .skipped])
        #expect(state.history[2].reason == "condition not met: gift is true")
    }

    @Test func skippingTheLastStepsCompletesTheSaga() throws {
        let atPivot = state(["amount": 500], runningUpTo: 4)
        #expect(atPivot.currentStep == 4)
        let decision = completed(4, atPivot)
        let done = try #require(decision.state)
        #expect(done.status == .completed)
        #expect(done.currentStep == 5)
        #expect(decision.commands.isEmpty)
        #expect(done.history.last?.outcome == .skipped && done.history.last?.stepName == "f")
        // With an email, f runs.
        let withEmail = completed(4, state(["amount": 500, "email": "x@example.com"], runningUpTo: 4))
        #expect(withEmail.commands.map(\.command.command) == ["f.do"])
    }

    @Test func theSagaStartsAtTheFirstStepWhoseConditionHolds() throws {
        let first = try SagaBuilder("review")
            .step("review", action: "fraud.review", compensation: "fraud.forget", when: .greaterThan("amount", 1000))
            .step("vip", action: "vip.mark", when: .isTrue("vip"))
            .step("charge", action: "payment.charge", compensation: "payment.refund")
            .build()
        let machine = SagaStateMachine(definition: first)
        let begun = machine.begin(id: "s1", payload: ["amount": 10], now: t0)
        #expect(begun.state.status == .running && begun.state.currentStep == 2 && begun.state.attempt == 1)
        #expect(begun.state.version == 1)
        #expect(begun.command?.command.command == "payment.charge")
        #expect(begun.state.history.map(\.outcome) == [.skipped, .skipped])
        let (state, command) = machine.start(id: "s1", payload: ["amount": 10], now: t0)
        #expect(state == begun.state && command == begun.command)
        // A big amount starts with the review.
        #expect(machine.begin(id: "s2", payload: ["amount": 5000], now: t0).command?.command.command == "fraud.review")
    }

    @Test func aSagaWhoseEveryStepIsSkippedCompletesAtTheStart() throws {
        let optional = try SagaBuilder("optional")
            .step("x", action: "x.do", when: .exists("x"))
            .step("y", action: "y.do", compensation: "y.undo", when: .exists("y"))
            .build()
        let machine = SagaStateMachine(definition: optional)
        let begun = machine.begin(id: "s1", payload: [:], now: t0)
        #expect(begun.state.status == .completed)
        #expect(begun.command == nil)
        #expect(begun.state.currentStep == 1)
        #expect(begun.state.history.map(\.stepName) == ["x", "y"])
        // The old API still returns a command: one for the completed saga, which participants
        // ignore as stale.
        let (state, command) = machine.start(id: "s1", payload: [:], now: t0)
        #expect(state.status == .completed)
        #expect(command.command.step == 1)
        let events = SagaLifecycleEvent.startEvents(begun.state, at: t0)
        #expect(events.map(\.kind) == [.started, .stepSkipped, .stepSkipped, .completed])
        #expect(Set(events.map(\.id)).count == 4)
        #expect(events[1].id == "s1:1:step-skipped:0" && events[1].reason == "condition not met: x exists")
    }

    @Test func aSkippedStepIsNeverCompensated() throws {
        // b and c skipped, d fails for good: only a is compensated.
        let atD = state(["amount": 500], runningUpTo: 3)
        var decision = machine.apply(
            .stepFailed(step: 3, attempt: 1, error: "declined", retryable: false, startedAt: t0), to: atD, now: t0)
        #expect(decision.state?.status == .compensating)
        #expect(decision.commands.map(\.command.command) == ["a.undo"])
        decision = machine.apply(.compensationCompleted(step: 0, attempt: 1, startedAt: t0), to: decision.state!, now: t0)
        #expect(decision.state?.status == .compensated)

        // b ran, c skipped, d timed out (its effect may have committed): d, b, a — c is skipped.
        var state = state(["amount": 5000], runningUpTo: 3)
        #expect(state.history.map(\.outcome) == [.completed, .completed, .skipped])
        decision = machine.apply(.stepTimedOut(step: 3, attempt: 1, after: .seconds(5), startedAt: t0), to: state, now: t0)
        var undone: [String] = []
        while let next = decision.state, next.status == .compensating {
            undone += decision.commands.map(\.command.command)
            state = next
            decision = machine.apply(.compensationCompleted(step: next.currentStep, attempt: 1, startedAt: t0), to: next, now: t0)
        }
        #expect(undone == ["d.undo", "b.undo", "a.undo"])
        #expect(decision.state?.status == .compensated)
    }

    @Test func aDeadlineOrAnOperatorCompensatesAroundSkippedSteps() throws {
        let atD = state(["amount": 500], runningUpTo: 3)
        let deadline = machine.apply(.deadlinePassed, to: atD, now: t0)
        #expect(deadline.commands.map(\.command.command) == ["d.undo"])
        let next = machine.apply(.compensationCompleted(step: 3, attempt: 1, startedAt: t0), to: deadline.state!, now: t0)
        #expect(next.commands.map(\.command.command) == ["a.undo"])
        let requested = machine.apply(.compensationRequested(by: "ops", reason: "customer cancelled"), to: atD, now: t0)
        #expect(requested.commands.map(\.command.command) == ["d.undo"])
    }

    @Test func duplicateAndStaleEventsAroundASkippedStepAreIgnored() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 500, "gift": true], now: t0)
        let atC = try #require(completed(0, start).state)
        #expect(atC.currentStep == 2)
        // The duplicate of a's completion, and any outcome for the skipped step b.
        for event: SagaEvent in [
            .stepCompleted(step: 0, attempt: 1, patch: ["amount": 5000], startedAt: t0),
            .stepCompleted(step: 1, attempt: 0, patch: [:], startedAt: t0),
            .stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0),
            .stepFailed(step: 1, attempt: 1, error: "x", retryable: false, startedAt: t0),
            .stepTimedOut(step: 1, attempt: 1, after: .seconds(1), startedAt: t0),
        ] {
            guard case .ignored = machine.apply(event, to: atC, now: t0) else {
                Issue.record("\(event) was not ignored")
                continue
            }
        }
        // While compensating, a compensation outcome for the skipped step is ignored too.
        let compensating = try #require(
            machine.apply(.stepFailed(step: 2, attempt: 1, error: "no", retryable: false, startedAt: t0), to: atC, now: t0).state)
        #expect(compensating.status == .compensating && compensating.currentStep == 0)
        guard case .ignored = machine.apply(.compensationCompleted(step: 1, attempt: 1, startedAt: t0), to: compensating, now: t0)
        else {
            Issue.record("a compensation of a skipped step was not ignored")
            return
        }
        // A completed saga ignores a late duplicate of its last step.
        let done = try #require(completed(4, state(["amount": 500], runningUpTo: 4)).state)
        guard case .ignored = completed(4, done) else {
            Issue.record("a duplicate after completion was not ignored")
            return
        }
    }

    @Test func anOperatorRetryAfterSkippedStepsResumesTheAction() throws {
        let atPivot = state(["amount": 500], runningUpTo: 4)
        let stuck = try #require(
            machine.apply(.stepFailed(step: 4, attempt: 1, error: "refused", retryable: false, startedAt: t0), to: atPivot, now: t0).state)
        #expect(stuck.status == .needsAttention)
        let retried = machine.apply(.retryRequested(by: "ops", reason: nil), to: stuck, now: t0)
        #expect(retried.state?.status == .running)
        #expect(retried.commands.map(\.command.command) == ["p.do"])
    }

    @Test func skipsPublishOneLifecycleEventEachWithTheCondition() throws {
        let (start, _) = machine.start(id: "s1", payload: ["amount": 500], now: t0)
        let event = SagaEvent.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0)
        let next = try #require(machine.apply(event, to: start, now: t0).state)
        let events = SagaLifecycleEvent.events(of: event, from: start, to: next, version: 2, at: t0)
        #expect(events.map(\.kind) == [.stepCompleted, .stepSkipped, .stepSkipped])
        #expect(events.map(\.id) == ["s1:2:step-completed", "s1:2:step-skipped:1", "s1:2:step-skipped:2"])
        #expect(events[1].stepName == "b" && events[1].step == 1 && events[1].phase == .action && events[1].attempt == nil)
        #expect(events[1].reason == "condition not met: amount > 1000")
        #expect(!SagaLifecycleEvent.Selection.outcomes.includes(.stepSkipped))
        let data = try JSONCoding.encode(events[1])
        #expect(try JSONCoding.decode(SagaLifecycleEvent.self, from: data) == events[1])

        // Skipping to completion: the step, the skip, then completed.
        let atPivot = state(["amount": 500], runningUpTo: 4)
        let last = SagaEvent.stepCompleted(step: 4, attempt: 1, patch: [:], startedAt: t0)
        let done = try #require(machine.apply(last, to: atPivot, now: t0).state)
        #expect(
            SagaLifecycleEvent.events(of: last, from: atPivot, to: done, version: 9, at: t0).map(\.kind) == [
                .stepCompleted, .stepSkipped, .completed,
            ])
        // A start that skips nothing publishes started only.
        let plain = machine.begin(id: "s2", payload: ["amount": 5000, "gift": true], now: t0)
        #expect(SagaLifecycleEvent.startEvents(plain.state, at: t0).map(\.kind) == [.started])
    }

    @Test func definitionsWithoutConditionsBehaveAsBefore() {
        let plain = try! SagaBuilder("plain").step("a", action: "a.do", compensation: "a.undo").step("b", action: "b.do").build()
        let machine = SagaStateMachine(definition: plain)
        let (start, first) = machine.start(id: "s", payload: [:], now: t0)
        #expect(start.currentStep == 0 && first.command.command == "a.do" && start.history.isEmpty)
        let next = machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), to: start, now: t0)
        #expect(next.state?.currentStep == 1 && next.state?.history.count == 1)
        #expect(plain.steps.allSatisfy { $0.condition == nil })
    }
}

@Suite("Conditional steps in definition documents")
struct ConditionalDefinitionDocumentTests {
    private static func order(condition: SagaCondition? = .greaterThan("amount", 1000)) throws -> SagaDefinition {
        try SagaBuilder("order")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step("review", action: "fraud.review", when: condition)
            .step("ship", action: "shipping.ship", options: .pivot)
            .build()
    }

    @Test func theConditionRoundTripsThroughTheDocument() throws {
        let condition = SagaCondition.all([.greaterThan("amount", 1000), .not(.oneOf("customer.country", ["FR", "DE"]))])
        let definition = try Self.order(condition: condition)
        let text = String(decoding: definition.canonicalJSON(), as: UTF8.self)
        #expect(
            text.contains(
                #""condition":{"conditions":[{"op":"greaterThan","path":"amount","value":1000},{"condition":{"op":"oneOf","path":"customer.country","values":["FR","DE"]},"op":"not"}],"op":"all"}"#
            ))
        let decoded = try SagaDefinition(canonicalJSON: definition.canonicalJSON())
        #expect(decoded == definition)
        #expect(decoded.steps[1].condition == condition)
        #expect(decoded.contentHash == definition.contentHash)
    }

    @Test func theConditionChangesTheHashAndIsADifference() throws {
        let big = try Self.order()
        let bigger = try Self.order(condition: .greaterThan("amount", 5000))
        let always = try Self.order(condition: nil)
        #expect(big.contentHash != bigger.contentHash)
        #expect(big.contentHash != always.contentHash)
        #expect(big.differences(from: bigger) == ["step 2 'review': condition 'amount > 1000' vs 'amount > 5000'"])
        #expect(big.differences(from: always) == ["step 2 'review': condition 'amount > 1000' vs none"])
    }

    @Test func aDefinitionWithoutConditionsKeepsItsBytesAndHash() throws {
        // Pinned: a stored definition without conditions must keep the bytes (and hash) it had
        // before conditions existed.
        let definition = try Self.order(condition: nil)
        let text = String(decoding: definition.canonicalJSON(), as: UTF8.self)
        #expect(!text.contains("condition"))
        #expect(
            text
                == #"{"compensationRetry":{"initialDelayMilliseconds":1000,"maxAttempts":10,"maxDelayMilliseconds":300000,"multiplier":2},"name":"order","steps":[{"action":"inventory.reserve","compensation":"inventory.release","name":"reserve","pivot":false,"retry":{"initialDelayMilliseconds":1000,"maxAttempts":3,"maxDelayMilliseconds":60000,"multiplier":2}},{"action":"fraud.review","name":"review","pivot":false,"retry":{"initialDelayMilliseconds":1000,"maxAttempts":3,"maxDelayMilliseconds":60000,"multiplier":2}},{"action":"shipping.ship","name":"ship","pivot":true,"retry":{"initialDelayMilliseconds":1000,"maxAttempts":3,"maxDelayMilliseconds":60000,"multiplier":2}}],"version":1}"#
        )
        #expect(definition.contentHash == "1c6aa05ac994d701")
    }

    @Test func aDocumentWithAnInvalidConditionIsRejected() throws {
        var document = try Self.order().document
        document.steps[1].condition = .all([])
        let error = #expect(throws: SagaError.self) { try document.definition() }
        #expect(error?.message.contains("step 2 'review': condition 'all()'") == true, "\(error?.message ?? "")")
        document.steps[1].condition = nil
        document.steps[2].condition = .exists("x")
        let pivot = #expect(throws: SagaError.self) { try document.definition() }
        #expect(pivot?.message.contains("is the pivot but has a condition") == true)
    }
}
