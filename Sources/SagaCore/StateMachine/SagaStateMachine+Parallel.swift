import Foundation

/// Where one member of a parallel group is, derived from the saga's history (the store keeps no
/// other record of it). Its description is the words tools show: `completed`,
/// `running (attempt 2)`, `failed`, `failed (timed out)`, `skipped`.
public enum ParallelMemberProgress: Sendable, Hashable, CustomStringConvertible {
    /// Its action runs (or waits for a retry): attempt `attempt` is the one expected.
    case running(attempt: Int)
    /// Its action completed.
    case completed
    /// Its action failed for good; `uncertain` when one of its attempts timed out, so that its
    /// effect may have committed (then it is compensated too).
    case failed(uncertain: Bool)
    /// Its condition did not hold when the saga reached the group: it never runs.
    case skipped

    /// `completed`, `running (attempt 2)`, `failed`, `failed (timed out)`, `skipped`.
    public var description: String {
        switch self {
        case .running(let attempt): "running (attempt \(attempt))"
        case .completed: "completed"
        case .failed(let uncertain): uncertain ? "failed (timed out)" : "failed"
        case .skipped: "skipped"
        }
    }
}

// Parallel groups (``SagaBuilder/parallel(_:_:)``). While a saga runs a group, its current step
// is the group's first step and every member's progress is derived from the history: no record
// = attempt 1 runs; `retrying` or an operator's `retryRequested` at attempt n = attempt n + 1
// runs; `completed`, `failed`, `skipped` = settled. When no member runs any more, the group
// settles: every member completed or skipped → the saga moves on; a member failed → the
// completed members and the steps before are compensated, newest first (the group waits for
// the members still running first, so that a member completing after its sibling failed is
// compensated too: the rule that `parallel.pml` checks).
extension SagaStateMachine {
    /// The steps of the parallel group a running saga is in, or `nil`.
    func activeGroup(_ state: SagaState) -> ClosedRange<Int>? {
        guard state.status == .running else { return nil }
        return definition.groupRange(of: state.currentStep)
    }

    /// The parallel group a saga is in, for tools that show it: while it runs the group, and
    /// when it stopped there for an operator before compensating anything (the rule a retry
    /// follows). `nil` otherwise.
    public func parallelGroup(of state: SagaState) -> ClosedRange<Int>? {
        guard let range = definition.groupRange(of: state.currentStep), range.lowerBound == state.currentStep else { return nil }
        switch state.status {
        case .running: return range
        case .needsAttention: return stoppedPhase(state) == .action ? range : nil
        case .compensating, .waiting, .completed, .compensated: return nil
        }
    }

    /// The progress of parallel-group member `step` in `state` (see ``ParallelMemberProgress``).
    public func progress(of step: Int, in state: SagaState) -> ParallelMemberProgress {
        var last: StepRecord?
        var uncertain = false
        for record in state.history where record.step == step && record.phase == .action {
            if record.timedOut == true { uncertain = true }
            // Re-sends and an operator's request to compensate do not change where a member is.
            if record.outcome != .resent && record.outcome != .compensationRequested { last = record }
        }
        guard let last else { return .running(attempt: 1) }
        switch last.outcome {
        case .completed: return .completed
        case .skipped: return .skipped
        case .failed: return .failed(uncertain: uncertain)
        case .retrying, .retryRequested, .resent, .compensationRequested: return .running(attempt: last.attempt + 1)
        }
    }

    /// Whether compensation must undo step `index`: it has a compensation, was not skipped, and,
    /// in a parallel group, did not fail without a doubt (a member still running when a deadline
    /// or an operator compensates is undone too, as a single current step is).
    func needsCompensation(_ index: Int, in state: SagaState) -> Bool {
        guard definition.steps[index].compensation != nil, !state.wasSkipped(index) else { return false }
        guard definition.groupRange(of: index) != nil else { return true }
        switch progress(of: index, in: state) {
        case .failed(uncertain: false), .skipped: return false
        case .running, .completed, .failed(uncertain: true): return true
        }
    }

    /// Where a saga is, in words: `step 'x'` or `parallel group 'g'`.
    func position(of state: SagaState) -> String {
        let step = definition.steps[state.currentStep]
        if state.status == .running, let group = step.group { return "parallel group '\(group)'" }
        return "step '\(step.name)'"
    }

    /// Why a member's outcome does not apply, or `nil` when it does.
    private func memberStaleness(_ state: SagaState, group: ClosedRange<Int>, step: Int, attempt: Int) -> String? {
        guard group.contains(step) else {
            return
                "saga \(state.id) runs parallel group '\(definition.steps[group.lowerBound].group ?? "")' (steps \(group.lowerBound + 1)–\(group.upperBound + 1)), not \(definition.describeStep(step))"
        }
        let progress = progress(of: step, in: state)
        guard progress == .running(attempt: attempt) else {
            return "saga \(state.id) expects \(definition.describeStep(step)) \(Self.describe(progress)), not attempt \(attempt)"
        }
        return nil
    }

    private static func describe(_ progress: ParallelMemberProgress) -> String {
        switch progress {
        case .running(let attempt): "attempt \(attempt)"
        case .completed: "no more (it completed)"
        case .failed: "no more (it failed)"
        case .skipped: "never (it was skipped)"
        }
    }

    func memberCompleted(
        _ state: SagaState, group: ClosedRange<Int>, step: Int, attempt: Int, patch: JSONObject, startedAt: Date, now: Date
    ) -> SagaDecision {
        if let stale = memberStaleness(state, group: group, step: step, attempt: attempt) { return .ignored(stale) }
        var next = state
        next.payload = state.payload.merging(patch: patch)
        record(&next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .completed)
        return settle(next, group: group, now: now)
    }

    func memberFailed(
        _ state: SagaState, group: ClosedRange<Int>, step: Int, attempt: Int, error: String, retryable: Bool, timedOut: Bool,
        startedAt: Date, now: Date
    ) -> SagaDecision {
        if let stale = memberStaleness(state, group: group, step: step, attempt: attempt) { return .ignored(stale) }
        let policy = definition.steps[step].options.retry
        var next = state
        if retryable && (definition.isForwardOnly(step) || attempt < policy.maxAttempts) {
            record(
                &next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .retrying, error: error,
                timedOut: timedOut)
            let command = makeCommand(next, step: step, phase: .action, attempt: attempt + 1)
            return .transition(next, [ScheduledCommand(command, delay: policy.delay(afterAttempt: attempt))])
        }
        record(
            &next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .failed, error: error,
            timedOut: timedOut)
        return settle(next, group: group, now: now)
    }

    /// The group after a member settled: wait for the members still running, then move on,
    /// compensate, or (after the pivot) stop for an operator.
    private func settle(_ state: SagaState, group: ClosedRange<Int>, now: Date) -> SagaDecision {
        var failures: [String] = []
        for member in group {
            switch progress(of: member, in: state) {
            case .running:
                return .transition(state, [])  // the group waits for every member
            case .failed:
                let error = state.history.last { $0.step == member && $0.phase == .action && $0.outcome == .failed }?.error ?? "failed"
                failures.append("step '\(definition.steps[member].name)' failed: \(error)")
            case .completed, .skipped:
                break
            }
        }
        guard !failures.isEmpty else {
            let (moved, commands) = moveForward(state, to: group.upperBound + 1, now: now)
            return .transition(moved, commands)
        }
        let groupName = definition.steps[group.lowerBound].group ?? ""
        let reason = "parallel group '\(groupName)': \(failures.joined(separator: "; "))"
        if definition.isForwardOnly(group.lowerBound) {
            var next = state
            next.status = .needsAttention
            next.failureReason = "\(reason) (after the pivot: it cannot be compensated)"
            return .transition(next, [])
        }
        return compensate(state, from: group.upperBound, reason: reason)
    }

    /// The reaper found a saga in a parallel group stalled: re-send the commands of the members
    /// still running, or give up after `maxReapAttempts` re-sends.
    func groupStalled(_ state: SagaState, group: ClosedRange<Int>, maxReapAttempts: Int, now: Date) -> SagaDecision {
        let running = group.compactMap { member -> (Int, Int)? in
            guard case .running(let attempt) = progress(of: member, in: state) else { return nil }
            return (member, attempt)
        }
        var next = state
        let names = running.map { "'\(definition.steps[$0.0].name)'" }.joined(separator: ", ")
        if state.reapAttempts >= maxReapAttempts {
            let reason =
                "stalled in \(position(of: state)) at step(s) \(names); the reaper re-sent their commands \(state.reapAttempts) time(s) without progress"
            next.status = .needsAttention
            next.failureReason = reason
            next.updatedAt = now
            return .transition(next, [])
        }
        next.reapAttempts += 1
        var commands: [ScheduledCommand] = []
        for (member, attempt) in running {
            next.history.append(
                StepRecord(
                    step: member, stepName: definition.steps[member].name, phase: .action, attempt: attempt, startedAt: now,
                    finishedAt: now, outcome: .resent, error: "stalled since \(state.updatedAt.formatted(.iso8601))"))
            Self.compact(&next.history, step: member, phase: .action)
            commands.append(ScheduledCommand(makeCommand(next, step: member, phase: .action, attempt: attempt)))
        }
        next.updatedAt = now
        return .transition(next, commands)
    }

    /// An operator's retry in a parallel group: every member still running runs again with its
    /// next attempt (or, when none runs — a member failed for good after the pivot — the failed
    /// members do).
    func retryGroup(
        _ state: SagaState, group: ClosedRange<Int>, actor: String, reason: String?, wasStopped: Bool, now: Date
    ) -> SagaDecision {
        var targets = group.compactMap { member -> (Int, Int)? in
            guard case .running(let attempt) = progress(of: member, in: state) else { return nil }
            return (member, attempt)
        }
        if targets.isEmpty {
            targets = group.compactMap { member -> (Int, Int)? in
                guard case .failed = progress(of: member, in: state) else { return nil }
                let last = state.history.last { $0.step == member && $0.phase == .action && $0.outcome == .failed }
                return (member, last?.attempt ?? 1)
            }
        }
        guard !targets.isEmpty else {
            return .rejected("saga \(state.id) has no step to retry in \(position(of: state))")
        }
        var next = state
        var commands: [ScheduledCommand] = []
        for (member, attempt) in targets {
            next.history.append(
                StepRecord(
                    step: member, stepName: definition.steps[member].name, phase: .action, attempt: attempt, startedAt: now,
                    finishedAt: now, outcome: .retryRequested, actor: actor, reason: reason))
            Self.compact(&next.history, step: member, phase: .action)
            commands.append(ScheduledCommand(makeCommand(next, step: member, phase: .action, attempt: attempt + 1)))
        }
        next.reapAttempts = 0
        next.failureReason = wasStopped ? nil : state.failureReason
        next.updatedAt = now
        return .transition(next, commands)
    }
}
