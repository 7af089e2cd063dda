import Foundation
import SagaCore
import Testing

/// a, b, c (with compensations), the pivot p, then the group "notify" of m and n, then q.
private let definition = try! SagaBuilder("resolve")
    .step("a", action: "a.do", compensation: "a.undo")
    .step("b", action: "b.do", compensation: "b.undo")
    .step("c", action: "c.do", compensation: "c.undo")
    .step("p", action: "p.do", options: .pivot)
    .parallel("notify") { group in group.step("m", action: "m.do").step("n", action: "n.do") }
    .step("q", action: "q.do")
    .compensationRetry(RetryPolicy(maxAttempts: 2))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_700_000_000)

/// An operator's `resolvedByOperator`: what a saga that needs attention stopped at was done by
/// hand, and the saga goes on.
@Suite("Resolving a saga that needs attention by hand")
struct ResolveTests {
    private func apply(_ event: SagaEvent, _ state: SagaState) throws -> SagaDecision {
        let decision = machine.apply(event, to: state, now: t0)
        _ = try #require(decision.state, "\(decision)")
        return decision
    }

    /// A saga that completed a, b and c, and failed p for good (a business failure at the pivot).
    private func stoppedAtThePivot() throws -> SagaState {
        var state = machine.start(id: "r1", payload: ["order": 7], now: t0).0
        for step in 0...2 { state = try apply(.stepCompleted(step: step, attempt: 1, patch: [:], startedAt: t0), state).state! }
        return try apply(.stepFailed(step: 3, attempt: 1, error: "address invalid", retryable: false, startedAt: t0), state).state!
    }

    @Test func aCompensationDoneByHandLetsTheEarlierOnesRunThenTheSagaIsCompensated() throws {
        var state = machine.start(id: "r2", payload: [:], now: t0).0
        state = try apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), state).state!
        state = try apply(.stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), state).state!
        // c refuses: b's refund then keeps failing.
        state = try apply(.stepFailed(step: 2, attempt: 1, error: "no stock", retryable: false, startedAt: t0), state).state!
        #expect(state.status == .compensating && state.currentStep == 1)
        for attempt in 1...2 {
            state = try apply(.compensationFailed(step: 1, attempt: attempt, error: "refund API down", startedAt: t0), state).state!
        }
        #expect(state.status == .needsAttention && machine.phase(of: state) == .compensation)

        let resolved = try apply(.resolvedByOperator(by: "alice", reason: "refunded by hand", patch: ["refundId": "R-17"]), state)
        #expect(resolved.state?.status == .compensating)
        #expect(resolved.commands.map(\.command.command) == ["a.undo"])
        #expect(resolved.state?.payload["refundId"] == "R-17")
        // It compensates for what it compensated for before it stopped.
        #expect(resolved.state?.failureReason == "step 'c' failed: no stock")
        let record = try #require(resolved.state?.history.last)
        #expect(record.step == 1 && record.phase == .compensation && record.outcome == .completed)
        #expect(record.actor == "alice" && record.reason == "resolved by hand: refunded by hand")

        let done = try apply(.compensationCompleted(step: 0, attempt: 1, startedAt: t0), resolved.state!)
        #expect(done.state?.status == .compensated && done.commands.isEmpty)
    }

    @Test func anActionPastThePivotDoneByHandMovesTheSagaForward() throws {
        let stopped = try stoppedAtThePivot()
        #expect(stopped.status == .needsAttention && machine.phase(of: stopped) == .action)
        let resolved = try apply(.resolvedByOperator(by: "bob", reason: "shipped by hand", patch: ["tracking": "T-1"]), stopped)
        #expect(resolved.state?.status == .running && resolved.state?.failureReason == nil)
        // On to the group: both members start.
        #expect(Set(resolved.commands.map(\.command.command)) == ["m.do", "n.do"])
        #expect(resolved.state?.payload["tracking"] == "T-1" && resolved.state?.payload["order"] == 7)
        let record = try #require(resolved.state?.history.last)
        #expect(record.step == 3 && record.phase == .action && record.outcome == .completed && record.actor == "bob")
    }

    @Test func unfinishedMembersOfAGroupAreDoneByHandAndTheSagaGoesOnAfterIt() throws {
        var state = try apply(.resolvedByOperator(by: "bob", reason: "shipped by hand", patch: [:]), try stoppedAtThePivot()).state!
        state = try apply(.stepCompleted(step: 4, attempt: 1, patch: [:], startedAt: t0), state).state!
        // n fails for good past the pivot: the reaper gives up on it (its retries go on for ever).
        for _ in 0...3 { state = try apply(.foundStalled(maxReapAttempts: 3), state).state! }
        #expect(state.status == .needsAttention)
        let resolved = try apply(.resolvedByOperator(by: "carol", reason: "sent the mail myself", patch: [:]), state)
        // m completed already: only n is recorded as done by hand; q runs next.
        #expect(resolved.commands.map(\.command.command) == ["q.do"])
        let byHand = resolved.state?.history.filter { $0.actor == "carol" }.map(\.stepName)
        #expect(byHand == ["n"])
    }

    /// An operator stops a saga retrying its pivot for ever: it needs attention where it is, its
    /// pending retry is no longer current, and a resolution by hand moves it on.
    @Test func aSagaRetryingForeverPastThePivotIsStoppedThenResolved() throws {
        var state = machine.start(id: "r5", payload: [:], now: t0).0
        for step in 0...2 { state = try apply(.stepCompleted(step: step, attempt: 1, patch: [:], startedAt: t0), state).state! }
        let failing = try apply(.stepFailed(step: 3, attempt: 1, error: "carrier down", retryable: true, startedAt: t0), state)
        let pendingRetry = try #require(failing.commands.first?.command)
        #expect(failing.state?.status == .running && pendingRetry.attempt == 2)

        let stopped = try apply(.stopRequested(by: "erin", reason: "the address does not exist"), failing.state!)
        #expect(stopped.commands.isEmpty)
        let state2 = try #require(stopped.state)
        #expect(state2.status == .needsAttention && machine.phase(of: state2) == .action)
        #expect(state2.failureReason == "stopped by erin: the address does not exist")
        let record = try #require(state2.history.last)
        #expect(record.step == 3 && record.outcome == .failed && record.actor == "erin" && record.reason == "the address does not exist")
        #expect(!machine.isCurrent(pendingRetry, in: state2), "the retry on its way is ignored")
        // Once more: refused, it is no longer running.
        guard case .rejected(let why) = machine.apply(.stopRequested(by: "erin", reason: "again"), to: state2, now: t0) else {
            Issue.record("a stopped saga was stopped again")
            return
        }
        #expect(why == "saga r5 is needsAttention; only a running or compensating saga can be stopped")
        let resolved = try apply(.resolvedByOperator(by: "erin", reason: "delivered by courier", patch: [:]), state2)
        #expect(Set(resolved.commands.map(\.command.command)) == ["m.do", "n.do"])
    }

    /// A compensating saga stopped keeps why it was compensating: a retry resumes the
    /// compensation.
    @Test func aStoppedCompensationResumesOnRetry() throws {
        var state = machine.start(id: "r6", payload: [:], now: t0).0
        state = try apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), state).state!
        state = try apply(.stepFailed(step: 1, attempt: 1, error: "no stock", retryable: false, startedAt: t0), state).state!
        #expect(state.status == .compensating)
        let stopped = try apply(.stopRequested(by: "erin", reason: "refund API broken"), state).state!
        #expect(stopped.status == .needsAttention && machine.phase(of: stopped) == .compensation)
        let retried = try apply(.retryRequested(by: "erin", reason: "fixed"), stopped)
        #expect(retried.state?.status == .compensating && retried.commands.map(\.command.command) == ["a.undo"])
        #expect(retried.state?.failureReason == "step 'b' failed: no stock")
    }

    @Test func onlyASagaThatNeedsAttentionCanBeResolved() throws {
        let running = machine.start(id: "r3", payload: [:], now: t0).0
        let refused = machine.apply(.resolvedByOperator(by: "dave", reason: "did it", patch: [:]), to: running, now: t0)
        guard case .rejected(let why) = refused else { Issue.record("\(refused)"); return }
        #expect(why == "saga r3 is running; only a saga that needs attention can be resolved by hand (its handlers may still report)")
    }

    @Test func aResolutionAimedAtAnOlderStateIsStale() throws {
        let stopped = try stoppedAtThePivot()
        let retried = try apply(.retryRequested(by: "ops", reason: nil), stopped).state!
        let event = SagaEvent.resolvedByOperator(by: "bob", reason: "shipped by hand", patch: [:])
        #expect(SagaStateMachine.staleness(of: event, aimedAt: stopped, reloaded: retried) != nil)
        #expect(SagaStateMachine.staleness(of: event, aimedAt: stopped, reloaded: stopped) == nil)
    }
}
