import Foundation
import SagaCore
import Testing

/// a, then the group "prepare" of x, y (retried up to 3 times) and z (when gift is true), then the
/// pivot p, then the group "notify" of m and n (after the pivot), then q.
private let definition = try! SagaBuilder("order")
    .step("a", action: "a.do", compensation: "a.undo")
    .parallel("prepare") { group in
        group
            .step("x", action: "x.do", compensation: "x.undo", options: StepOptions(retry: .none))
            .step("y", action: "y.do", compensation: "y.undo", options: StepOptions(retry: RetryPolicy(maxAttempts: 3)))
            .step("z", action: "z.do", compensation: "z.undo", when: .isTrue("gift"))
    }
    .step("p", action: "p.do", options: .pivot)
    .parallel("notify") { group in
        group.step("m", action: "m.do").step("n", action: "n.do")
    }
    .step("q", action: "q.do")
    .compensationRetry(RetryPolicy(maxAttempts: 3))
    .deadline(.seconds(60))
    .build()

private let machine = SagaStateMachine(definition: definition)
private let t0 = Date(timeIntervalSince1970: 1_700_000_000)

@Suite("Parallel groups in the state machine")
struct ParallelGroupTests {
    private func completed(_ step: Int, _ state: SagaState, attempt: Int = 1, patch: JSONObject = [:]) -> SagaDecision {
        machine.apply(.stepCompleted(step: step, attempt: attempt, patch: patch, startedAt: t0), to: state, now: t0)
    }

    private func failed(_ step: Int, _ state: SagaState, attempt: Int = 1, retryable: Bool = false) -> SagaDecision {
        machine.apply(.stepFailed(step: step, attempt: attempt, error: "no", retryable: retryable, startedAt: t0), to: state, now: t0)
    }

    private func compensated(_ step: Int, _ state: SagaState) -> SagaDecision {
        machine.apply(.compensationCompleted(step: step, attempt: 1, startedAt: t0), to: state, now: t0)
    }

    /// A saga that completed `a` and now runs the group "prepare".
    private func inGroup(_ payload: JSONObject = ["gift": true]) throws -> (SagaState, [String]) {
        let (start, _) = machine.start(id: "s1", payload: payload, now: t0)
        let decision = completed(0, start)
        return (try #require(decision.state), decision.commands.map(\.command.command))
    }

    private func commands(_ decision: SagaDecision) -> [String] { decision.commands.map(\.command.command) }

    /// Compensates until the saga is compensated; returns the compensation commands in order.
    private func compensateAll(_ decision: SagaDecision) throws -> (SagaState, [String]) {
        var state = try #require(decision.state)
        var sent = commands(decision)
        while state.status == .compensating {
            let next = compensated(state.currentStep, state)
            sent += commands(next)
            state = try #require(next.state)
        }
        return (state, sent)
    }

    // MARK: - Definitions

    @Test func theBuilderKeepsTheGroupAndItsSteps() throws {
        #expect(definition.steps.map(\.group) == [nil, "prepare", "prepare", "prepare", nil, "notify", "notify", nil])
        #expect(definition.groupRange(of: 2) == 1...3)
        #expect(definition.groupRange(of: 0) == nil)
        #expect(definition.groups.map(\.name) == ["prepare", "notify"])
        #expect(definition.groups.map(\.steps) == [1...3, 5...6])
    }

    @Test(arguments: [
        ("one", "parallel group 'g' has one step ('x')"),
        ("empty", "parallel group 'g' has no steps"),
        ("pivot", "step 'y' in parallel group 'g' is the pivot"),
        ("name", "parallel group 'a' has the name of a step"),
    ])
    func badGroupsAreRefusedWithWhatAndWhere(_ kind: String, _ message: String) {
        var builder = SagaBuilder("bad").step("a", action: "a.do", compensation: "a.undo")
        switch kind {
        case "one": builder = builder.parallel("g") { $0.step("x", action: "x.do") }
        case "empty": builder = builder.parallel("g") { $0 }
        case "pivot": builder = builder.parallel("g") { $0.step("x", action: "x.do").step("y", action: "y.do", options: .pivot) }
        default: builder = builder.parallel("a") { $0.step("x", action: "x.do").step("y", action: "y.do") }
        }
        #expect {
            try builder.build()
        } throws: { error in
            (error as? SagaError)?.code == .invalidDefinition && "\(error)".contains(message)
        }
    }

    @Test func aGroupSplitInTwoIsRefused() throws {
        var document = definition.document
        // "p" (not in a group) between two runs of "prepare".
        document.steps[5].group = "prepare"
        document.steps[6].group = "prepare"
        #expect {
            try document.definition()
        } throws: { error in
            "\(error)".contains("parallel group 'prepare' is split")
        }
    }

    @Test func theDocumentKeepsGroupsAndDefinitionsWithoutThemKeepTheirBytes() throws {
        let rebuilt = try SagaDefinition(canonicalJSON: definition.canonicalJSON())
        #expect(rebuilt == definition)
        let plain = try SagaBuilder("plain").step("a", action: "a.do").build()
        #expect(!String(decoding: plain.canonicalJSON(), as: UTF8.self).contains("group"))
        let other = try SagaBuilder("order").step("a", action: "a.do").step("b", action: "b.do").build()
        let grouped = try SagaBuilder("order").parallel("g") { $0.step("a", action: "a.do").step("b", action: "b.do") }.build()
        #expect(grouped.differences(from: other) == ["step 1 'a': parallel group 'g' vs none", "step 2 'b': parallel group 'g' vs none"])
    }

    // MARK: - Running a group

    @Test func reachingTheGroupStartsEveryMemberAtOnce() throws {
        let (state, sent) = try inGroup()
        #expect(sent == ["x.do", "y.do", "z.do"])
        #expect(state.status == .running && state.currentStep == 1)
        #expect(machine.commands(for: state).map(\.command.command) == ["x.do", "y.do", "z.do"])
        for step in 1...3 {
            #expect(machine.progress(of: step, in: state) == .running(attempt: 1))
            #expect(machine.isCurrent(machine.makeCommand(state, step: step, phase: .action, attempt: 1), in: state))
        }
        #expect(!machine.isCurrent(machine.makeCommand(state, step: 1, phase: .action, attempt: 2), in: state))
        #expect(!machine.isCurrent(machine.makeCommand(state, step: 4, phase: .action, attempt: 1), in: state))
    }

    @Test func aMemberWhoseConditionDoesNotHoldIsSkippedAndNeverAwaited() throws {
        let (state, sent) = try inGroup(["gift": false])
        #expect(sent == ["x.do", "y.do"])
        #expect(machine.progress(of: 3, in: state) == .skipped)
        let afterX = try #require(completed(1, state).state)
        let afterY = completed(2, afterX)
        #expect(commands(afterY) == ["p.do"])
    }

    @Test func theGroupJoinsWhenEveryMemberCompletedInAnyOrderWithTheirPatches() throws {
        let (state, _) = try inGroup()
        let first = completed(3, state, patch: ["z": 1])
        #expect(first.state?.status == .running && commands(first).isEmpty)
        let afterFirst = try #require(first.state)
        let second = completed(1, afterFirst, patch: ["x": 1])
        #expect(commands(second).isEmpty)
        let afterSecond = try #require(second.state)
        let last = completed(2, afterSecond, patch: ["y": 1])
        #expect(commands(last) == ["p.do"])
        let joined = try #require(last.state)
        #expect(joined.currentStep == 4 && joined.attempt == 1)
        #expect(joined.payload["x"] == 1 && joined.payload["y"] == 1 && joined.payload["z"] == 1)
    }

    @Test func duplicateAndStaleMemberOutcomesAreIgnored() throws {
        let (state, _) = try inGroup()
        let afterX = try #require(completed(1, state).state)
        guard case .ignored(let duplicate) = completed(1, afterX) else { Issue.record("a duplicate completion was applied"); return }
        #expect(duplicate.contains("no more (it completed)"))
        guard case .ignored = completed(2, afterX, attempt: 2) else { Issue.record("a future attempt was applied"); return }
        guard case .ignored = completed(4, afterX) else { Issue.record("a step after the group was applied"); return }
        guard case .ignored = failed(1, afterX) else { Issue.record("a failure after the completion was applied"); return }
    }

    @Test func aRetryableFailureRetriesThatMemberAloneWhileTheOthersRun() throws {
        let (state, _) = try inGroup()
        let retry = failed(2, state, retryable: true)
        #expect(retry.commands.map(\.command.command) == ["y.do"])
        #expect(retry.commands.first?.command.attempt == 2 && retry.commands.first?.delay == .seconds(1))
        let retrying = try #require(retry.state)
        #expect(machine.progress(of: 2, in: retrying) == .running(attempt: 2))
        #expect(machine.progress(of: 1, in: retrying) == .running(attempt: 1))
        let x = try #require(completed(1, retrying).state)
        let z = try #require(completed(3, x).state)
        guard case .ignored = completed(2, z, attempt: 1) else { Issue.record("the failed attempt's twin was applied"); return }
        #expect(commands(completed(2, z, attempt: 2)) == ["p.do"])
    }

    @Test func aFailingMemberWaitsForTheOthersThenTheCompletedOnesAndEarlierStepsAreCompensatedNewestFirst() throws {
        let (state, _) = try inGroup()
        let zDone = try #require(completed(3, state).state)
        let xFailed = failed(1, zDone)
        // y still runs: nothing is compensated yet.
        #expect(xFailed.state?.status == .running && commands(xFailed).isEmpty)
        #expect(machine.progress(of: 1, in: xFailed.state!) == .failed(uncertain: false))
        // y completes after its sibling failed: it is compensated too.
        let waiting = try #require(xFailed.state)
        let yDone = completed(2, waiting)
        #expect(yDone.state?.status == .compensating)
        #expect(yDone.state?.failureReason == "parallel group 'prepare': step 'x' failed: no")
        let (final, sent) = try compensateAll(yDone)
        #expect(sent == ["z.undo", "y.undo", "a.undo"])  // x failed: never compensated
        #expect(final.status == .compensated)
    }

    @Test func twoFailingMembersAreNamedInTheReason() throws {
        let (state, _) = try inGroup(["gift": false])
        let x = try #require(failed(1, state).state)
        let y = failed(2, x, attempt: 1, retryable: false)
        #expect(y.state?.failureReason == "parallel group 'prepare': step 'x' failed: no; step 'y' failed: no")
        #expect(commands(y) == ["a.undo"])
    }

    @Test func aMemberThatTimedOutOnItsLastAttemptIsCompensatedToo() throws {
        let (state, _) = try inGroup(["gift": false])
        let x = try #require(completed(1, state).state)
        var y = x
        for attempt in 1...3 {
            y = try #require(
                machine.apply(.stepTimedOut(step: 2, attempt: attempt, after: .seconds(5), startedAt: t0), to: y, now: t0).state)
        }
        #expect(y.status == .compensating)
        #expect(machine.progress(of: 2, in: y) == .failed(uncertain: true))
        let (_, sent) = try compensateAll(.transition(y, [machine.command(for: y)]))
        #expect(sent == ["y.undo", "x.undo", "a.undo"])
    }

    @Test func aDeadlineCompensatesEveryMemberIncludingRunningOnesAndLateOutcomesAreIgnored() throws {
        let (state, _) = try inGroup()
        let x = try #require(completed(1, state).state)
        let deadline = machine.apply(.deadlinePassed, to: x, now: t0)
        #expect(deadline.state?.failureReason == "deadline passed at parallel group 'prepare'")
        let compensating = try #require(deadline.state)
        #expect(commands(deadline) == ["z.undo"])
        guard case .ignored = completed(2, compensating) else { Issue.record("a late member outcome was applied"); return }
        let (_, sent) = try compensateAll(deadline)
        #expect(sent == ["z.undo", "y.undo", "x.undo", "a.undo"])
    }

    @Test func anOperatorCompensationInAGroupUndoesEveryMember() throws {
        let (state, _) = try inGroup(["gift": false])
        let decision = machine.apply(.compensationRequested(by: "ops", reason: "customer cancelled"), to: state, now: t0)
        let (_, sent) = try compensateAll(decision)
        #expect(sent == ["y.undo", "x.undo", "a.undo"])
    }

    @Test func theReaperResendsTheRunningMembersAndGivesUpAfterItsLimitThenAnOperatorRetries() throws {
        let (state, _) = try inGroup()
        let x = try #require(completed(1, state).state)
        let resend = machine.apply(.foundStalled(maxReapAttempts: 1), to: x, now: t0)
        #expect(commands(resend) == ["y.do", "z.do"])
        #expect(resend.commands.map(\.command.attempt) == [1, 1])
        let resent = try #require(resend.state)
        #expect(machine.progress(of: 2, in: resent) == .running(attempt: 1))
        let stuck = try #require(machine.apply(.foundStalled(maxReapAttempts: 1), to: resent, now: t0).state)
        #expect(stuck.status == .needsAttention)
        #expect(stuck.failureReason?.contains("stalled in parallel group 'prepare' at step(s) 'y', 'z'") == true)
        let retry = machine.apply(.retryRequested(by: "ops", reason: nil), to: stuck, now: t0)
        #expect(retry.state?.status == .running && retry.state?.failureReason == nil)
        #expect(commands(retry) == ["y.do", "z.do"])
        #expect(retry.commands.map(\.command.attempt) == [2, 2])
        let retried = try #require(retry.state)
        let y = try #require(completed(2, retried, attempt: 2).state)
        #expect(commands(completed(3, y, attempt: 2)) == ["p.do"])
    }

    @Test func aGroupAfterThePivotNeedsAttentionWhenAMemberRefusesAndRetriesIt() throws {
        var (state, _) = machine.start(id: "s1", payload: ["gift": false], now: t0)
        for step in [0, 1, 2] { state = try #require(completed(step, state).state) }
        let pivot = completed(4, state)
        #expect(commands(pivot) == ["m.do", "n.do"])
        let afterPivot = try #require(pivot.state)
        // Retryable failures after the pivot are retried without limit.
        let retried = failed(5, afterPivot, attempt: 1, retryable: true)
        #expect(commands(retried) == ["m.do"])
        let retrying = try #require(retried.state)
        let refused = try #require(failed(5, retrying, attempt: 2).state)
        #expect(refused.status == .running)  // n still runs
        let stopped = try #require(completed(6, refused).state)
        #expect(stopped.status == .needsAttention)
        #expect(stopped.failureReason?.hasSuffix("(after the pivot: it cannot be compensated)") == true)
        let retry = machine.apply(.retryRequested(by: "ops", reason: "fixed"), to: stopped, now: t0)
        #expect(commands(retry) == ["m.do"] && retry.commands.first?.command.attempt == 3)
        let resumed = try #require(retry.state)
        #expect(commands(completed(5, resumed, attempt: 3)) == ["q.do"])
    }

    @Test func aGroupWhoseMembersAreAllSkippedIsPassed() throws {
        let skipping = try SagaBuilder("skip")
            .step("a", action: "a.do")
            .parallel("g") { $0.step("x", action: "x.do", when: .isTrue("x")).step("y", action: "y.do", when: .isTrue("y")) }
            .step("b", action: "b.do")
            .build()
        let machine = SagaStateMachine(definition: skipping)
        let (start, _) = machine.start(id: "s", payload: [:], now: t0)
        let decision = machine.apply(.stepCompleted(step: 0, attempt: 1, patch: [:], startedAt: t0), to: start, now: t0)
        #expect(decision.commands.map(\.command.command) == ["b.do"])
        #expect(decision.state?.history.filter { $0.outcome == .skipped }.map(\.stepName) == ["x", "y"])
    }

    @Test func aSagaThatStartsWithAGroupSendsEveryMemberFirst() throws {
        let first = try SagaBuilder("first")
            .parallel("g") { $0.step("x", action: "x.do").step("y", action: "y.do") }
            .build()
        let start = SagaStateMachine(definition: first).begin(id: "s", payload: [:], now: t0)
        #expect(start.commands.map(\.command.command) == ["x.do", "y.do"])
        #expect(SagaStateMachine(definition: first).commands(for: start.state).map(\.command.command) == ["x.do", "y.do"])
    }

    // MARK: - Lifecycle events

    @Test func lifecycleEventsSayWhichMemberRetriesAndDoNotRepeatSkippedMembers() throws {
        let (state, _) = try inGroup(["gift": false])
        let retry = try #require(failed(2, state, retryable: true).state)
        let events = SagaLifecycleEvent.events(
            of: .stepFailed(step: 2, attempt: 1, error: "no", retryable: true, startedAt: t0), from: state, to: retry, version: 3, at: t0)
        #expect(events.map(\.kind) == [.stepFailed] && events.first?.willRetry == true)
        let x = try #require(completed(1, retry).state)
        let xEvents = SagaLifecycleEvent.events(
            of: .stepCompleted(step: 1, attempt: 1, patch: [:], startedAt: t0), from: retry, to: x, version: 4, at: t0)
        // z was skipped when the group started, not now.
        #expect(xEvents.map(\.kind) == [.stepCompleted])
    }
}
