import Foundation
import SagaCore
import Testing

/// reserve, then charge (2 attempts; fallback "backup.charge" behind a breaker: 3 failures, open
/// 30 s), then ship (the pivot).
private let definition = try! SagaBuilder("order")
    .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
    .step(
        "charge", action: "payment.charge", compensation: "payment.refund", options: StepOptions(retry: RetryPolicy(maxAttempts: 2)),
        fallback: SagaFallback(action: "backup.charge", breaker: CircuitBreakerPolicy(failureThreshold: 3, openFor: .seconds(30)))
    )
    .step("ship", action: "shipping.ship", options: .pivot)
    .build()

private let t0 = Date(timeIntervalSince1970: 1_700_000_000)
private let breaker = CircuitBreakerPolicy(failureThreshold: 3, openFor: .seconds(30))

@Suite("Fallbacks and circuit breakers")
struct FallbackTests {
    private let machine = SagaStateMachine(definition: definition)

    private func commands(_ decision: SagaDecision) -> [String] { decision.commands.map(\.command.command) }

    /// A saga that completed reserve and runs charge.
    private func charging(_ machine: SagaStateMachine) throws -> (SagaState, SagaDecision) {
        let (start, _) = machine.start(id: "s1", payload: [:], now: t0)
        let decision = machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), to: start, now: t0)
        return (try #require(decision.state), decision)
    }

    private func failed(_ state: SagaState, attempt: Int, retryable: Bool = true) -> SagaDecision {
        machine.apply(
            .stepFailed(step: 1, attempt: attempt, error: "gateway down", retryable: retryable, startedAt: t0), to: state, now: t0)
    }

    // MARK: - The breaker's own transitions

    @Test func theBreakerOpensAtTheThresholdThenIsHalfOpenAfterItsInterval() {
        var state = CircuitBreakerState.closed
        state = state.recordingFailure(breaker, at: t0)
        state = state.recordingFailure(breaker, at: t0)
        #expect(state.position(breaker, at: t0) == .closed && state.failures == 2)
        state = state.recordingFailure(breaker, at: t0)
        #expect(state.position(breaker, at: t0.addingTimeInterval(29)) == .open(until: t0.addingTimeInterval(30)))
        #expect(!state.allowsPrimary(breaker, at: t0.addingTimeInterval(29)))
        #expect(state.position(breaker, at: t0.addingTimeInterval(30)) == .halfOpen)
        #expect(state.allowsPrimary(breaker, at: t0.addingTimeInterval(30)))
    }

    @Test func aFailedProbeReopensItAndASuccessClosesIt() {
        let open = CircuitBreakerState(failures: 3, openedAt: t0)
        let later = t0.addingTimeInterval(40)
        let reopened = open.recordingFailure(breaker, at: later)
        #expect(reopened.position(breaker, at: later) == .open(until: later.addingTimeInterval(30)))
        #expect(reopened.recordingSuccess() == .closed)
        // A success between failures starts the count again.
        let one = CircuitBreakerState.closed.recordingFailure(breaker, at: t0).recordingSuccess().recordingFailure(breaker, at: t0)
        #expect(one.failures == 1 && one.openedAt == nil)
    }

    // MARK: - The fallback in the state machine

    @Test func thePrimaryFailingForGoodRunsTheFallbackWithTheNextAttempt() throws {
        let (state, entered) = try charging(machine)
        #expect(commands(entered) == ["payment.charge"])
        let retry = failed(state, attempt: 1)
        #expect(commands(retry) == ["payment.charge"] && retry.commands.first?.command.attempt == 2)
        let retrying = try #require(retry.state)
        let fallback = failed(retrying, attempt: 2)
        #expect(commands(fallback) == ["backup.charge"])
        #expect(fallback.commands.first?.command.attempt == 3)
        let onFallback = try #require(fallback.state)
        #expect(onFallback.status == .running && machine.usesFallback(1, in: onFallback))
        #expect(onFallback.history.last?.outcome == .failed && onFallback.history.last?.error == "gateway down")
        // A late outcome of the primary is stale; the fallback's completes the step.
        guard case .ignored = machine.apply(.stepCompleted(step: 1, attempt: 2, patch: [:], startedAt: t0), to: onFallback, now: t0) else {
            Issue.record("the primary's late outcome was applied")
            return
        }
        let done = machine.apply(.stepCompleted(step: 1, attempt: 3, patch: ["by": "backup"], startedAt: t0), to: onFallback, now: t0)
        #expect(commands(done) == ["shipping.ship"])
    }

    @Test func theFallbackHasTheStepsRetryPolicyThenTheSagaIsCompensatedByTheStepsCompensation() throws {
        let (state, _) = try charging(machine)
        let retried = try #require(failed(state, attempt: 1).state)
        var current = try #require(failed(retried, attempt: 2).state)
        let retry = failed(current, attempt: 3)
        #expect(commands(retry) == ["backup.charge"] && retry.commands.first?.command.attempt == 4)
        current = try #require(retry.state)
        let compensation = failed(current, attempt: 4)
        #expect(commands(compensation) == ["inventory.release"])
        #expect(compensation.state?.failureReason == "step 'charge' failed 4 time(s): gateway down")
    }

    @Test func aBusinessRefusalOfThePrimaryCompensatesWithoutTheFallback() throws {
        let (state, _) = try charging(machine)
        let refusal = failed(state, attempt: 1, retryable: false)
        #expect(commands(refusal) == ["inventory.release"])
    }

    @Test func aTimedOutPrimaryRunsTheFallbackAndIsCompensatedIfTheFallbackFails() throws {
        let (state, _) = try charging(machine)
        let first = try #require(
            machine.apply(.stepTimedOut(step: 1, attempt: 1, after: .seconds(5), startedAt: t0), to: state, now: t0).state)
        let second = machine.apply(.stepTimedOut(step: 1, attempt: 2, after: .seconds(5), startedAt: t0), to: first, now: t0)
        #expect(commands(second) == ["backup.charge"])
        var current = try #require(second.state)
        current = try #require(failed(current, attempt: 3).state)
        // The primary may have charged: the step itself is compensated (by its compensation).
        #expect(commands(failed(current, attempt: 4)) == ["payment.refund"])
    }

    @Test func anOpenCircuitSendsTheFallbackAtOnceAndAHalfOpenOneTriesThePrimary() throws {
        let open = SagaStateMachine(
            definition: definition, circuits: [definition.circuitKey(ofStep: 1): CircuitBreakerState(failures: 3, openedAt: t0)])
        let (state, entered) = try charging(open)
        #expect(commands(entered) == ["backup.charge"] && entered.commands.first?.command.attempt == 1)
        let record = try #require(state.history.last)
        #expect(record.attempt == 0 && record.outcome == .failed)
        #expect(record.error == "circuit 'order/charge' is open until 2023-11-14T22:13:50Z: the fallback runs")
        // Half open (t0 + 30 s): the primary is tried.
        let halfOpen = SagaStateMachine(
            definition: definition, circuits: [definition.circuitKey(ofStep: 1): CircuitBreakerState(failures: 3, openedAt: t0)])
        let (start, _) = halfOpen.start(id: "s2", payload: [:], now: t0)
        let later = halfOpen.apply(
            .stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), to: start, now: t0.addingTimeInterval(30))
        #expect(commands(later) == ["payment.charge"])
    }

    @Test func definitionsKeepTheFallbackAndRefuseItWhereItCannotBe() throws {
        #expect(
            definition.commands == [
                "inventory.reserve", "inventory.release", "payment.charge", "backup.charge", "payment.refund", "shipping.ship",
            ])
        #expect(definition.locate(command: "backup.charge")?.index == 1)
        let rebuilt = try SagaDefinition(canonicalJSON: definition.canonicalJSON())
        #expect(rebuilt == definition)
        #expect {
            try SagaBuilder("bad").step("p", action: "p.do", options: .pivot, fallback: SagaFallback(action: "p.alt")).build()
        } throws: { "\($0)".contains("has fallback 'p.alt' but is the pivot") }
        #expect {
            try SagaBuilder("bad").step("a", action: "a.do", fallback: SagaFallback(action: "a.do")).build()
        } throws: { "\($0)".contains("command 'a.do' is already used") }
        #expect {
            try SagaBuilder("bad").step(
                "a", action: "a.do", fallback: SagaFallback(action: "a.alt", breaker: CircuitBreakerPolicy(failureThreshold: 0))
            ).build()
        } throws: { "\($0)".contains("the circuit breaker needs a failure threshold of at least 1") }
    }

    @Test func theFallbackSwitchSaysTheStepWillRunAgainInItsEvent() throws {
        let (state, _) = try charging(machine)
        let retrying = try #require(failed(state, attempt: 1).state)
        let fallback = try #require(failed(retrying, attempt: 2).state)
        let events = SagaLifecycleEvent.events(
            of: .stepFailed(step: 1, attempt: 2, error: "gateway down", retryable: true, startedAt: t0), from: retrying, to: fallback,
            version: 4, at: t0)
        #expect(events.map(\.kind) == [.stepFailed] && events.first?.willRetry == true)
    }
}
