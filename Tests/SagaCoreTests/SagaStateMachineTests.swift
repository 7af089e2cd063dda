import Foundation
import SagaCore
import Testing

/// A four-step saga: a (compensated), b (nothing to undo), c (compensated), pivot p, then f.
private let definition = try! SagaBuilder("trip")
    .step("a", action: "a.do", compensation: "a.undo")
    .step("b", action: "b.do")
    .step("c", action: "c.do", compensation: "c.undo", options: StepOptions(retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(3))))
    .step("p", action: "p.do", options: .pivot)
    .step("f", action: "f.do")
    .compensationRetry(RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(10)))
    .deadline(.seconds(60))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_000_000)

@Suite("Saga state machine")
struct SagaStateMachineTests {
    /// Drives the saga from the start to the action of `step`, all steps succeeding once.
    private func state(atStep step: Int) -> SagaState {
        var (state, _) = machine.start(id: "s1", payload: ["order": "o-1"], now: t0)
        for index in 0..<step {
            state = machine.apply(.stepCompleted(step: index, attempt: 1, patch: [:], startedAt: t0), to: state, now: t0).state!
        }
        return state
    }

    @Test func startSendsTheFirstActionAndSetsTheDeadline() {
        let (state, first) = machine.start(id: "s1", payload: ["order": "o-1"], context: ["correlationId": "c-1"], now: t0)
        #expect(state.status == .running)
        #expect(state.currentStep == 0 && state.attempt == 1 && state.version == 1)
        #expect(state.deadline == t0.addingTimeInterval(60))
        #expect(first.command.command == "a.do" && first.command.phase == .action && first.delay == nil)
        #expect(first.command.idempotencyKey == "s1:a:action")
        // The incarnation (when it started) goes into the keys handlers get; a saga stored
        // without one keeps the keys it had.
        #expect(state.context["correlationId"] == "c-1")
        #expect(state.incarnation == SagaState.incarnation(startedAt: t0) && state.incarnation?.isEmpty == false)
        #expect(first.command.idempotencyKey(incarnation: state.incarnation) == "s1:a:action:\(state.incarnation ?? "")")
        #expect(first.command.idempotencyKey(incarnation: nil) == "s1:a:action")
    }

    @Test func happyPathRunsEveryActionInOrderAndMergesPatches() {
        var (state, command) = machine.start(id: "s1", payload: ["order": "o-1"], now: t0)
        var sent: [String] = [command.command.command]
        for index in definition.steps.indices {
            let decision = machine.apply(
                .stepCompleted(step: index, attempt: 1, patch: ["step\(index)": true], startedAt: t0), to: state,
                now: t0.addingTimeInterval(Double(index)))
            state = decision.state!
            sent += decision.commands.map(\.command.command)
        }
        #expect(sent == ["a.do", "b.do", "c.do", "p.do", "f.do"])
        #expect(state.status == .completed)
        #expect(state.payload == ["order": "o-1", "step0": true, "step1": true, "step2": true, "step3": true, "step4": true])
        #expect(state.history.map(\.outcome) == Array(repeating: .completed, count: 5))
        #expect(state.updatedAt == t0.addingTimeInterval(4))
    }

    @Test(arguments: [0, 1, 2])
    func failureAtStepKCompensatesEarlierStepsInReverseOrder(failing k: Int) {
        var state = state(atStep: k)
        var decision = machine.apply(
            .stepFailed(step: k, attempt: 1, error: "declined", retryable: false, startedAt: t0), to: state, now: t0)
        var compensations: [String] = []
        while case .transition(let next, let commands) = decision, let command = commands.first {
            state = next
            #expect(command.command.phase == .compensation)
            compensations.append(command.command.command)
            decision = machine.apply(.compensationCompleted(step: command.command.step, attempt: 1, startedAt: t0), to: state, now: t0)
        }
        state = decision.state ?? state
        let expected = [2: ["a.undo"], 1: ["a.undo"], 0: []][k]!  // b has nothing to undo; the failed step is not compensated
        #expect(compensations == expected)
        #expect(state.status == .compensated)
        #expect(state.failureReason == "step '\(definition.steps[k].name)' failed: declined")
    }

    @Test func failureAtTheLastCompensatableStepCompensatesInReverse() {
        let atPivot = state(atStep: 3)
        // Before the pivot is reached, fail c's retry: c is step 2 and compensates a only.
        // Use an operator compensation at the pivot's predecessor instead: from step 2 inclusive.
        let atC = state(atStep: 2)
        let decision = machine.apply(.compensationRequested(by: "test", reason: "operator"), to: atC, now: t0)
        #expect(decision.commands.map(\.command.command) == ["c.undo"])
        let next = machine.apply(.compensationCompleted(step: 2, attempt: 1, startedAt: t0), to: decision.state!, now: t0)
        #expect(next.commands.map(\.command.command) == ["a.undo"])  // b is skipped
        #expect(
            machine.apply(.compensationRequested(by: "test", reason: "operator"), to: atPivot, now: t0)
                == .rejected("saga s1 is past its pivot step; it can only go forward"))
    }

    @Test func retryableFailureIsRetriedWithBackoffThenCompensates() {
        let atC = state(atStep: 2)
        let retry = machine.apply(.stepFailed(step: 2, attempt: 1, error: "timeout", retryable: true, startedAt: t0), to: atC, now: t0)
        #expect(retry.state?.attempt == 2)
        #expect(retry.state?.status == .running)
        #expect(
            retry.commands == [
                ScheduledCommand(
                    SagaCommand(sagaID: "s1", sagaName: "trip", command: "c.do", step: 2, stepName: "c", phase: .action, attempt: 2),
                    delay: .seconds(3))
            ])
        #expect(retry.state?.history.last?.outcome == .retrying)
        // Second attempt is the last one (maxAttempts 2): compensation starts.
        let exhausted = machine.apply(
            .stepFailed(step: 2, attempt: 2, error: "timeout", retryable: true, startedAt: t0), to: retry.state!, now: t0)
        #expect(exhausted.state?.status == .compensating)
        #expect(exhausted.commands.map(\.command.command) == ["a.undo"])
        #expect(exhausted.state?.failureReason == "step 'c' failed 2 time(s): timeout")
    }

    @Test func failuresAtAndAfterThePivotAreRetriedForwardWithoutLimit() {
        var state = state(atStep: 3)
        for attempt in 1...50 {
            let decision = machine.apply(
                .stepFailed(step: 3, attempt: attempt, error: "carrier down", retryable: true, startedAt: t0), to: state, now: t0)
            #expect(decision.state?.status == .running)
            #expect(decision.commands.first?.command.command == "p.do")
            #expect(decision.commands.first?.delay ?? .zero <= RetryPolicy.default.maxDelay)
            state = decision.state!
        }
        #expect(state.attempt == 51)
        let done = machine.apply(.stepCompleted(step: 3, attempt: 51, patch: [:], startedAt: t0), to: state, now: t0)
        #expect(done.commands.map(\.command.command) == ["f.do"])
    }

    @Test func aBusinessFailureAfterThePivotNeedsAttention() {
        let state = state(atStep: 4)
        let decision = machine.apply(
            .stepFailed(step: 4, attempt: 1, error: "address invalid", retryable: false, startedAt: t0), to: state, now: t0)
        #expect(decision.state?.status == .needsAttention)
        #expect(decision.commands.isEmpty)
        #expect(decision.state?.failureReason?.contains("after the pivot") == true)
        // Stopped in its action (what `saga list` shows).
        #expect(decision.state.map(machine.phase(of:)) == .action)
    }

    @Test func failingCompensationIsRetriedThenNeedsAttention() {
        let failed = machine.apply(
            .stepFailed(step: 1, attempt: 1, error: "no", retryable: false, startedAt: t0), to: state(atStep: 1), now: t0)
        var state = failed.state!
        #expect(failed.commands.map(\.command.command) == ["a.undo"])
        var delays: [Duration?] = []
        for attempt in 1...2 {
            let decision = machine.apply(
                .compensationFailed(step: 0, attempt: attempt, error: "db down", startedAt: t0), to: state, now: t0)
            state = decision.state!
            #expect(state.status == .compensating)
            delays += decision.commands.map(\.delay)
        }
        #expect(delays == [.seconds(1), .seconds(2)])
        let last = machine.apply(.compensationFailed(step: 0, attempt: 3, error: "db down", startedAt: t0), to: state, now: t0)
        #expect(last.state?.status == .needsAttention)
        // Stopped in a compensation, which the state's own phase cannot tell (`saga list` said "action #3").
        #expect(last.state?.phase == .action && last.state.map(machine.phase(of:)) == .compensation)
        // Why it stopped, and why it was compensating: neither is lost.
        #expect(
            last.state?.failureReason == "compensation of step 'a' failed 3 time(s): db down (compensating because: step 'b' failed: no)")
        #expect(last.commands.isEmpty)
        // An operator's retry resumes the compensation with the reason it compensates for.
        let retried = machine.apply(.retryRequested(by: "ops", reason: nil), to: last.state!, now: t0)
        #expect(retried.state?.status == .compensating)
        #expect(retried.state?.failureReason == "step 'b' failed: no")
        let done = machine.apply(.compensationCompleted(step: 0, attempt: 4, startedAt: t0), to: retried.state!, now: t0)
        #expect(done.state?.status == .compensated && done.state?.failureReason == "step 'b' failed: no")
    }

    @Test func duplicateAndStaleEventsChangeNothing() {
        let atB = state(atStep: 1)
        // A redelivery of step 0's completion.
        #expect(
            machine.apply(.stepCompleted(step: 0, attempt: 1, patch: ["x": 1], startedAt: t0), to: atB, now: t0)
                == .ignored("saga s1 waits for step 2 'b' action attempt 1, not step 1 'a' action attempt 1"))
        // An older attempt of the current step.
        let retried = machine.apply(.stepFailed(step: 1, attempt: 1, error: "e", retryable: true, startedAt: t0), to: atB, now: t0).state!
        if case .ignored = machine.apply(.stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), to: retried, now: t0) {
        } else {
            Issue.record("an old attempt must be ignored")
        }
        // A compensation event while running.
        if case .ignored = machine.apply(.compensationCompleted(step: 1, attempt: 1, startedAt: t0), to: atB, now: t0) {
        } else {
            Issue.record("a compensation event while running must be ignored")
        }
    }

    @Test func terminalSagasNeverMove() {
        let completed = (0..<5).reduce(state(atStep: 0)) { state, index in
            machine.apply(.stepCompleted(step: index, attempt: 1, patch: [:], startedAt: t0), to: state, now: t0).state!
        }
        #expect(completed.status == .completed)
        let compensated = machine.apply(
            .stepFailed(step: 0, attempt: 1, error: "x", retryable: false, startedAt: t0), to: state(atStep: 0), now: t0
        ).state!
        #expect(compensated.status == .compensated)
        for terminal in [completed, compensated] {
            let events: [SagaEvent] = [
                .stepCompleted(step: terminal.currentStep, attempt: terminal.attempt, patch: [:], startedAt: t0),
                .stepFailed(step: terminal.currentStep, attempt: terminal.attempt, error: "x", retryable: true, startedAt: t0),
                .compensationCompleted(step: terminal.currentStep, attempt: terminal.attempt, startedAt: t0),
                .compensationFailed(step: terminal.currentStep, attempt: terminal.attempt, error: "x", startedAt: t0),
                .deadlinePassed, .foundStalled(maxReapAttempts: 3), .retryRequested(by: "test", reason: nil),
                .compensationRequested(by: "test", reason: "x"),
            ]
            for event in events {
                #expect(machine.apply(event, to: terminal, now: t0).state == nil, "\(event) moved a \(terminal.status) saga")
            }
        }
    }

    @Test func deadlineBeforeThePivotCompensatesFromTheCurrentStep() {
        let decision = machine.apply(.deadlinePassed, to: state(atStep: 2), now: t0)
        #expect(decision.state?.status == .compensating)
        #expect(decision.commands.map(\.command.command) == ["c.undo"])
        if case .ignored = machine.apply(.deadlinePassed, to: state(atStep: 4), now: t0) {
        } else {
            Issue.record("a deadline after the pivot must not compensate")
        }
    }

    /// An operator's retry can move the deadline or remove it (a saga resumed after an outage
    /// longer than its deadline would compensate otherwise); the history and the lifecycle event
    /// say so, from when to when.
    @Test func aRetryMovesOrRemovesTheDeadline() throws {
        let late = state(atStep: 2)
        let later = t0.addingTimeInterval(3600)
        let moved = try #require(
            machine.apply(.retryRequested(by: "ops", reason: "outage over", deadline: .set(later)), to: late, now: t0).state)
        #expect(moved.deadline == later && moved.status == .running && moved.attempt == late.attempt + 1)
        #expect(
            moved.history.last?.reason
                == "outage over (deadline moved from \(t0.addingTimeInterval(60).formatted(.iso8601)) to \(later.formatted(.iso8601)))")
        let removed = try #require(machine.apply(.retryRequested(by: "ops", reason: nil, deadline: .remove), to: late, now: t0).state)
        #expect(removed.deadline == nil)
        #expect(removed.history.last?.reason == "deadline from \(t0.addingTimeInterval(60).formatted(.iso8601)) removed")
        let kept = try #require(machine.apply(.retryRequested(by: "ops", reason: "again"), to: late, now: t0).state)
        #expect(kept.deadline == late.deadline && kept.history.last?.reason == "again")
        // Past its new deadline, the saga compensates as before.
        #expect(machine.apply(.deadlinePassed, to: moved, now: later.addingTimeInterval(1)).state?.status == .compensating)
    }

    @Test func stalledSagasAreResentThenNeedAttention() {
        var state = state(atStep: 1)
        for round in 1...2 {
            let decision = machine.apply(.foundStalled(maxReapAttempts: 2), to: state, now: t0.addingTimeInterval(Double(round)))
            #expect(
                decision.commands.map(\.command) == [
                    SagaCommand(sagaID: "s1", sagaName: "trip", command: "b.do", step: 1, stepName: "b", phase: .action, attempt: 1)
                ])
            state = decision.state!
            #expect(state.reapAttempts == round)
            #expect(state.updatedAt == t0.addingTimeInterval(Double(round)))
        }
        let givenUp = machine.apply(.foundStalled(maxReapAttempts: 2), to: state, now: t0)
        #expect(givenUp.state?.status == .needsAttention)
        #expect(givenUp.state?.failureReason?.contains("re-sent its command 2 time(s)") == true)
        // Progress resets the counter.
        let progressed = machine.apply(.stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), to: state, now: t0).state!
        #expect(progressed.reapAttempts == 0)
        // An operator retry revives it with a new attempt.
        let retried = machine.apply(.retryRequested(by: "test", reason: nil), to: givenUp.state!, now: t0)
        #expect(retried.state?.status == .running)
        #expect(retried.commands.map(\.command.attempt) == [2])
    }

    @Test func retryOfAStuckCompensationResumesCompensating() {
        var state = machine.apply(
            .stepFailed(step: 1, attempt: 1, error: "no", retryable: false, startedAt: t0), to: state(atStep: 1), now: t0
        ).state!
        for attempt in 1...3 {
            state = machine.apply(.compensationFailed(step: 0, attempt: attempt, error: "down", startedAt: t0), to: state, now: t0).state!
        }
        #expect(state.status == .needsAttention)
        #expect(
            machine.apply(.compensationRequested(by: "test", reason: "x"), to: state, now: t0)
                == .rejected("saga s1 is stuck in a compensation; retry it instead"))
        let retried = machine.apply(.retryRequested(by: "test", reason: nil), to: state, now: t0)
        #expect(retried.state?.status == .compensating)
        #expect(retried.commands.map(\.command.command) == ["a.undo"])
        #expect(retried.commands.map(\.command.attempt) == [4])
    }

    @Test func operatorActionsAreRecordedWithWhoAndWhy() throws {
        let atC = state(atStep: 2)
        let retried = try #require(machine.apply(.retryRequested(by: "alice", reason: "payment provider is back"), to: atC, now: t0).state)
        let retryRecord = try #require(retried.history.last)
        #expect(retryRecord.outcome == .retryRequested)
        #expect(retryRecord.outcome.isOperatorAction)
        #expect(retryRecord.actor == "alice")
        #expect(retryRecord.reason == "payment provider is back")
        #expect(retryRecord.step == 2 && retryRecord.attempt == 1 && retryRecord.finishedAt == t0)

        let compensated = try #require(
            machine.apply(.compensationRequested(by: "bob", reason: "customer cancelled"), to: atC, now: t0).state)
        let compensationRecord = try #require(compensated.history.last)
        #expect(compensationRecord.outcome == .compensationRequested)
        #expect(compensationRecord.actor == "bob")
        #expect(compensationRecord.reason == "customer cancelled")
        #expect(compensated.failureReason == "customer cancelled (compensation requested by bob)")
        // A refused request records nothing.
        let refused = machine.apply(.compensationRequested(by: "bob", reason: "too late"), to: state(atStep: 3), now: t0)
        #expect(refused.state == nil)
    }

    @Test func operatorActionsSurviveTheTrimmingOfALongHistory() throws {
        // Past the pivot a failing step is retried forever; an operator's retry stays in the history.
        var state = state(atStep: 3)
        state = try #require(machine.apply(.retryRequested(by: "carol", reason: "after the fix"), to: state, now: t0).state)
        for attempt in state.attempt..<(state.attempt + SagaStateMachine.retainedRecordsPerStep * 3) {
            state = try #require(
                machine.apply(.stepFailed(step: 3, attempt: attempt, error: "down", retryable: true, startedAt: t0), to: state, now: t0)
                    .state)
        }
        #expect(state.history.filter { $0.step == 3 }.count <= SagaStateMachine.retainedRecordsPerStep + 2)
        #expect(state.history.contains { $0.outcome == .retryRequested && $0.actor == "carol" && $0.reason == "after the fix" })
    }
}
