public import Foundation

/// Something that happened to a saga.
public enum SagaEvent: Sendable, Hashable {
    /// The action of `step` succeeded on attempt `attempt`; `patch` is shallow-merged into the
    /// payload.
    case stepCompleted(step: Int, attempt: Int, patch: JSONObject, startedAt: Date)
    /// The action of `step` failed. A `retryable` failure is retried by the step's policy; a
    /// non-retryable one (a business refusal: `failAndCompensate`) starts compensation at once.
    case stepFailed(step: Int, attempt: Int, error: String, retryable: Bool, startedAt: Date)
    /// The action of `step` did not finish within the step's timeout (`after`). It is retried like
    /// a retryable failure, but nobody knows whether its effect committed: when the attempts run
    /// out before the pivot, the step itself is compensated too (as on a deadline).
    case stepTimedOut(step: Int, attempt: Int, after: Duration, startedAt: Date)
    /// The compensation of `step` succeeded.
    case compensationCompleted(step: Int, attempt: Int, startedAt: Date)
    /// The compensation of `step` failed; it is retried with capped backoff up to the definition's
    /// compensation policy, then the saga needs attention.
    case compensationFailed(step: Int, attempt: Int, error: String, startedAt: Date)
    /// The saga's deadline passed.
    case deadlinePassed
    /// The reaper found the saga not updated for too long. After `maxReapAttempts` re-sends
    /// without progress the saga needs attention.
    case foundStalled(maxReapAttempts: Int)
    /// An operator (`actor`, with an optional `reason`) asked to run the current step again (also
    /// from needs-attention). From needs-attention, a saga that was compensating resumes its
    /// compensation. `deadline` moves or removes the saga's deadline with it (a saga resumed
    /// after an outage longer than its deadline would compensate otherwise). Recorded in the
    /// history with who and why (and the deadline's move).
    case retryRequested(by: String, reason: String?, deadline: SagaDeadlineChange = .keep)
    /// An operator (`actor`) asked to compensate the saga now (only before the pivot). Recorded in
    /// the history with who and why.
    case compensationRequested(by: String, reason: String)
    /// An operator (`actor`) asked to stop a running or compensating saga where it is (a step
    /// past the pivot that will never succeed, retried for ever): it needs attention, as if the
    /// reaper had given up, and its commands still on their way are ignored. From there the
    /// operator retries, compensates (before the pivot) or resolves it. Not for a saga in a
    /// parallel group. Recorded in the history with who and why.
    case stopRequested(by: String, reason: String)
    /// An operator (`actor`) did by hand what a saga that needs attention stopped at — the
    /// action of its step past the pivot (every unfinished member of its parallel group), or the
    /// compensation that kept failing — and says so (`reason`); `patch` is merged into the
    /// saga's data. The saga goes on as if that work had succeeded: forward to its next step, or
    /// on with the earlier compensations. Only from needs-attention (a running saga's handler may
    /// still report). Recorded in the history as completed, with who and why.
    case resolvedByOperator(by: String, reason: String, patch: JSONObject)
    /// The signal `name` arrived (``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``), sent by
    /// `by` when known: its `payload` is merged into the saga's data. At the wait that waits for
    /// it, the saga goes on; before the saga reaches that wait, it is kept (the wait completes as
    /// soon as it is reached); after the wait ended, it is ignored.
    case signalReceived(name: String, payload: JSONObject, by: String?)
    /// The reaper found the saga waiting past its wait's timeout: it is compensated or goes on,
    /// as the wait declares (ignored when the timeout has not passed).
    case waitExpired
}

/// A new saga: its initial state and its first command (see
/// ``SagaStateMachine/begin(id:payload:context:now:)``).
public struct SagaStart: Sendable, Hashable {
    /// The state to store (version 1): running at the first step whose condition holds, or
    /// completed when every step was skipped.
    public var state: SagaState
    /// The first commands to send: one, or every member of a parallel group that the saga starts
    /// with; empty when every step was skipped (the saga is completed).
    public var commands: [ScheduledCommand]

    /// The first command to send; `nil` when every step was skipped (the saga is completed).
    public var command: ScheduledCommand? { commands.first }

    /// Creates a start.
    public init(state: SagaState, commands: [ScheduledCommand]) {
        self.state = state
        self.commands = commands
    }
}

/// What the state machine decided.
public enum SagaDecision: Sendable, Hashable {
    /// Store this state and send these commands (atomically, through the outbox).
    case transition(SagaState, [ScheduledCommand])
    /// Nothing to do: the event is a duplicate, stale, or arrives after the saga finished. The
    /// reason says which, for the log line.
    case ignored(String)
    /// The event is not allowed in the saga's state (for example compensating after the pivot).
    case rejected(String)

    /// The new state, for transitions.
    public var state: SagaState? {
        if case .transition(let state, _) = self { return state }
        return nil
    }

    /// The commands to send, for transitions (empty otherwise).
    public var commands: [ScheduledCommand] {
        if case .transition(_, let commands) = self { return commands }
        return []
    }
}

/// The saga state machine: a pure function from a definition, a state and an event to the next
/// state and the commands to send. No I/O; the runtime stores the result atomically with its
/// commands and publishes them.
///
/// Rules:
/// - Actions run in order. A step whose condition (``SagaStep/condition``) does not hold for the
///   saga's data when the saga reaches it (at the start, or when the step before it completes)
///   is skipped: recorded as ``StepOutcome/skipped`` with the condition's text, never run, never
///   compensated. Several may be skipped in a row; skipping the last step completes the saga.
/// - When the action of step *k* fails for good before the pivot, the
///   compensations of the completed steps *k-1 … 1* run in reverse order, skipping steps that
///   have no compensation. The failed step itself is not compensated (its local transaction did
///   not commit) — unless one of its attempts timed out: then nobody knows whether its effect
///   committed, and compensation starts with step *k* itself.
/// - A deadline or an operator's request compensates from the *current* step inclusive, because
///   its action may be running at that moment; compensations must therefore tolerate an action
///   that never happened (they are idempotent by the idempotency key anyway).
/// - From the pivot on, retryable failures are retried forward without limit (capped backoff).
///   A non-retryable failure there cannot be compensated: the saga needs attention.
/// - A failing compensation is retried with the definition's compensation policy; when it is
///   exhausted the saga needs attention.
/// - An event for another step, phase or attempt than the current one is ignored, and a
///   terminal saga never moves again except by an operator's retry from needs-attention.
/// - A step's history keeps its first attempt and its latest ``retainedRecordsPerStep`` records
///   per phase, so a step retried forever after the pivot does not grow the saga without bound.
/// - A parallel group (``SagaBuilder/parallel(_:_:)``) sends every member at once and joins when
///   all completed; a member failing for good waits for the running ones, then the completed
///   members and the steps before are compensated (see `SagaStateMachine+Parallel.swift`).
/// - A wait step (``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``) stops the saga as
///   `waiting` until ``SagaEvent/signalReceived(name:payload:by:)`` or ``SagaEvent/waitExpired``.
/// - A step with a fallback (``SagaFallback``) runs it when its primary fails for good with an
///   error or a timeout, or at once while the primary's circuit (``circuits``) is open.
public struct SagaStateMachine: Sendable {
    /// The definition the saga follows.
    public let definition: SagaDefinition

    /// How many of the latest records of one step and phase the history keeps (besides the
    /// step's first record); older ones are dropped.
    public static let retainedRecordsPerStep = 20

    /// The circuit breakers of the definition's steps that have one, by
    /// ``SagaDefinition/circuitKey(ofStep:)`` (missing ones are closed): a saga that reaches a
    /// step whose circuit is open runs its fallback at once.
    public let circuits: [String: CircuitBreakerState]

    /// Creates a state machine for a definition, with the current state of its circuit breakers.
    public init(definition: SagaDefinition, circuits: [String: CircuitBreakerState] = [:]) {
        self.definition = definition
        self.circuits = circuits
    }

    /// The initial state of a new saga and its first command.
    ///
    /// The saga starts at the first step whose condition holds for `payload` (steps before it
    /// are recorded as skipped). Use ``begin(id:payload:context:now:)`` when a definition has
    /// conditions, parallel groups or waits: it gives every first command (a group starts with
    /// several, a wait with none). When every step is skipped the saga is completed at once and
    /// has no first command — this method then returns the command of the last step, which
    /// participants ignore as stale (the saga is already completed).
    public func start(id: SagaID, payload: JSONObject, context: [String: String] = [:], now: Date) -> (SagaState, ScheduledCommand) {
        let begun = begin(id: id, payload: payload, context: context, now: now)
        return (begun.state, begun.command ?? command(for: begun.state))
    }

    /// The initial state of a new saga and its first command, if it has one.
    ///
    /// The saga starts at the first step whose condition (``SagaStep/condition``) holds for
    /// `payload`; the steps before it are recorded as skipped. When no step applies, the saga is
    /// completed at once, with every step skipped and no command.
    /// ``SagaLifecycleEvent/startEvents(_:at:)`` gives the start's lifecycle events.
    public func begin(id: SagaID, payload: JSONObject, context: [String: String] = [:], now: Date) -> SagaStart {
        var context = context
        if context[SagaState.incarnationKey] == nil { context[SagaState.incarnationKey] = SagaState.incarnation(startedAt: now) }
        let state = SagaState(
            id: id,
            name: definition.name,
            status: .running,
            currentStep: 0,
            attempt: 1,
            payload: payload,
            context: context,
            history: [],
            deadline: definition.deadline.map { now.addingTimeInterval($0.seconds) },
            createdAt: now,
            updatedAt: now,
            version: 1
        )
        let (started, commands) = moveForward(state, to: 0, now: now)
        return SagaStart(state: started, commands: commands)
    }

    /// The command that is current for a non-terminal state (what the saga waits for). In a
    /// parallel group, the first of ``commands(for:)``.
    public func command(for state: SagaState) -> ScheduledCommand {
        commands(for: state).first ?? ScheduledCommand(currentCommand(state, phase: state.phase))
    }

    /// The commands a non-terminal state waits for: the current step's, or in a parallel group
    /// the commands of every member still running.
    public func commands(for state: SagaState) -> [ScheduledCommand] {
        if let group = activeGroup(state) {
            return group.compactMap { member in
                guard case .running(let attempt) = progress(of: member, in: state) else { return nil }
                return ScheduledCommand(makeCommand(state, step: member, phase: .action, attempt: attempt))
            }
        }
        return [ScheduledCommand(currentCommand(state, phase: state.phase))]
    }

    /// Whether `command` is one that `state` waits for (``commands(for:)``): participants run
    /// only those, and ignore stale and duplicate commands.
    public func isCurrent(_ command: SagaCommand, in state: SagaState) -> Bool {
        guard !state.status.isTerminal, state.phase == command.phase else { return false }
        if command.phase == .action, let group = activeGroup(state) {
            return group.contains(command.step) && progress(of: command.step, in: state) == .running(attempt: command.attempt)
        }
        return state.currentStep == command.step && state.attempt == command.attempt
    }

    /// Applies an event. Every transition sets `updatedAt` to `now`, except one that leaves a
    /// waiting saga waiting at the same step (a signal kept for a later wait): a waiting saga's
    /// `updatedAt` is when it began to wait, which its timeout counts from. A transition also
    /// clears the saga's deadline once it has reached its pivot: from there the deadline no
    /// longer applies (the saga goes forward), and a saga without one is not found again by the
    /// reaper's search for sagas past their deadline.
    public func apply(_ event: SagaEvent, to state: SagaState, now: Date) -> SagaDecision {
        let decision = decide(event, state, now: now)
        guard case .transition(var next, let commands) = decision else { return decision }
        let stillWaiting = state.status == .waiting && next.status == .waiting && next.currentStep == state.currentStep
        next.updatedAt = stillWaiting ? state.updatedAt : now
        if next.deadline != nil, next.status == .running || next.status == .waiting, definition.isForwardOnly(next.currentStep) {
            next.deadline = nil
        }
        return .transition(next, commands)
    }

    private func decide(_ event: SagaEvent, _ state: SagaState, now: Date) -> SagaDecision {
        guard state.name == definition.name else {
            return .rejected("saga \(state.id) follows '\(state.name)', not '\(definition.name)'")
        }
        guard definition.steps.indices.contains(state.currentStep) else {
            return .rejected(
                "saga \(state.id) is at \(definition.describeStep(state.currentStep)), which definition '\(definition.name)' does not have")
        }
        switch event {
        case .stepCompleted(let step, let attempt, let patch, let startedAt):
            if let group = activeGroup(state) {
                return memberCompleted(state, group: group, step: step, attempt: attempt, patch: patch, startedAt: startedAt, now: now)
            }
            if let stale = staleness(state, step: step, phase: .action, attempt: attempt) { return .ignored(stale) }
            var next = state
            next.payload = state.payload.merging(patch: patch)
            record(&next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .completed)
            let (moved, commands) = moveForward(next, to: step + 1, now: now)
            return .transition(moved, commands)

        case .stepFailed(let step, let attempt, let error, let retryable, let startedAt):
            if let group = activeGroup(state) {
                return memberFailed(
                    state, group: group, step: step, attempt: attempt, error: error, retryable: retryable, timedOut: false,
                    startedAt: startedAt, now: now)
            }
            if let stale = staleness(state, step: step, phase: .action, attempt: attempt) { return .ignored(stale) }
            return actionFailed(
                state, step: step, attempt: attempt, error: error, retryable: retryable, timedOut: false, startedAt: startedAt, now: now)

        case .stepTimedOut(let step, let attempt, let limit, let startedAt):
            if let group = activeGroup(state) {
                return memberFailed(
                    state, group: group, step: step, attempt: attempt, error: "timed out after \(limit)", retryable: true, timedOut: true,
                    startedAt: startedAt, now: now)
            }
            if let stale = staleness(state, step: step, phase: .action, attempt: attempt) { return .ignored(stale) }
            return actionFailed(
                state, step: step, attempt: attempt, error: "timed out after \(limit)", retryable: true, timedOut: true,
                startedAt: startedAt,
                now: now)

        case .compensationCompleted(let step, let attempt, let startedAt):
            if let stale = staleness(state, step: step, phase: .compensation, attempt: attempt) { return .ignored(stale) }
            var next = state
            record(&next, step: step, phase: .compensation, attempt: attempt, startedAt: startedAt, now: now, outcome: .completed)
            return compensate(next, before: step, reason: nil)

        case .compensationFailed(let step, let attempt, let error, let startedAt):
            if let stale = staleness(state, step: step, phase: .compensation, attempt: attempt) { return .ignored(stale) }
            let policy = definition.compensationRetry
            var next = state
            if attempt < policy.maxAttempts {
                record(
                    &next, step: step, phase: .compensation, attempt: attempt, startedAt: startedAt, now: now, outcome: .retrying,
                    error: error)
                next.attempt = attempt + 1
                let delay = policy.delay(afterAttempt: attempt)
                return .transition(next, [ScheduledCommand(currentCommand(next, phase: .compensation), delay: delay)])
            }
            record(
                &next, step: step, phase: .compensation, attempt: attempt, startedAt: startedAt, now: now, outcome: .failed, error: error)
            next.status = .needsAttention
            next.failureReason = Self.stopping(
                "compensation of step '\(definition.steps[step].name)' failed \(attempt) time(s): \(error)",
                compensatingBecause: state.failureReason)
            return .transition(next, [])

        case .deadlinePassed:
            guard !state.status.isTerminal else { return .ignored("saga \(state.id) is already \(state.status.rawValue)") }
            guard state.status == .running || state.status == .waiting else {
                return .ignored("saga \(state.id) is already compensating")
            }
            guard !definition.isForwardOnly(state.currentStep) else {
                return .ignored("saga \(state.id) passed its deadline after the pivot; it keeps going forward")
            }
            return compensate(
                state, from: definition.groupRange(of: state.currentStep)?.upperBound ?? state.currentStep,
                reason: "deadline passed at \(position(of: state))")

        case .foundStalled(let maxReapAttempts):
            guard !state.status.isTerminal else { return .ignored("saga \(state.id) is already \(state.status.rawValue)") }
            guard state.status != .waiting else { return .ignored("saga \(state.id) waits for a signal; it is not stalled") }
            if let group = activeGroup(state) {
                return groupStalled(state, group: group, maxReapAttempts: maxReapAttempts, now: now)
            }
            var next = state
            let phase = state.phase
            if state.reapAttempts >= maxReapAttempts {
                let reason =
                    "stalled at step '\(definition.steps[state.currentStep].name)' (\(phase.rawValue)); the reaper re-sent its command \(state.reapAttempts) time(s) without progress"
                // The record keeps the phase the saga was in, so that a retry resumes it.
                record(
                    &next, step: state.currentStep, phase: phase, attempt: state.attempt, startedAt: now, now: now, outcome: .failed,
                    error: reason)
                next.reapAttempts = state.reapAttempts
                next.status = .needsAttention
                next.failureReason =
                    phase == .compensation ? Self.stopping(reason, compensatingBecause: state.failureReason) : reason
                return .transition(next, [])
            }
            next.reapAttempts += 1
            record(
                &next, step: state.currentStep, phase: phase, attempt: state.attempt, startedAt: now, now: now, outcome: .resent,
                error: "stalled since \(state.updatedAt.formatted(.iso8601))")
            return .transition(next, [ScheduledCommand(currentCommand(next, phase: phase))])

        case .retryRequested(let actor, let requested, let deadlineChange):
            guard state.status != .completed, state.status != .compensated else {
                return .rejected("saga \(state.id) is \(state.status.rawValue); there is nothing to retry")
            }
            if state.status == .waiting, let wait = definition.steps[state.currentStep].wait {
                return .rejected(
                    "saga \(state.id) waits for signal '\(wait.signal)'; there is nothing to retry (send the signal, or compensate it)")
            }
            var next = state
            let reason = Self.reason(requested, moving: state.deadline, deadlineChange)
            switch deadlineChange {
            case .keep: break
            case .remove: next.deadline = nil
            case .set(let date): next.deadline = date
            }
            let phase: StepPhase
            if state.status == .needsAttention {
                phase = stoppedPhase(state)
                next.status = phase == .compensation ? .compensating : .running
            } else {
                phase = state.phase
            }
            if phase == .action, let group = activeGroup(next) {
                return retryGroup(next, group: group, actor: actor, reason: reason, wasStopped: state.status == .needsAttention, now: now)
            }
            recordOperatorAction(&next, phase: phase, outcome: .retryRequested, actor: actor, reason: reason, now: now)
            next.attempt = state.attempt + 1
            next.reapAttempts = 0
            if state.status == .needsAttention {
                // A resumed compensation keeps the reason it compensates for; a resumed action
                // has no failure (yet).
                next.failureReason = phase == .compensation ? Self.compensationReason(in: state.failureReason) : nil
            }
            return .transition(next, [ScheduledCommand(currentCommand(next, phase: phase))])

        case .signalReceived(let name, let payload, let sender):
            return signalReceived(state, name: name, payload: payload, by: sender, now: now)

        case .waitExpired:
            return waitExpired(state, now: now)

        case .resolvedByOperator(let actor, let reason, let patch):
            return resolved(state, by: actor, reason: reason, patch: patch, now: now)

        case .stopRequested(let actor, let reason):
            guard state.status == .running || state.status == .compensating else {
                return .rejected(
                    "saga \(state.id) is \(state.status.rawValue); only a running or compensating saga can be stopped")
            }
            if activeGroup(state) != nil {
                return .rejected(
                    "saga \(state.id) runs a parallel group; stopping it there is not supported: let its members finish, or compensate it (before the pivot)"
                )
            }
            let phase = state.phase
            let why = "stopped by \(actor): \(reason)"
            var next = state
            next.history.append(
                StepRecord(
                    step: state.currentStep, stepName: definition.steps[state.currentStep].name, phase: phase,
                    attempt: state.attempt, startedAt: now, finishedAt: now, outcome: .failed, error: why, actor: actor,
                    reason: reason))
            Self.compact(&next.history, step: state.currentStep, phase: phase)
            next.status = .needsAttention
            next.failureReason = phase == .compensation ? Self.stopping(why, compensatingBecause: state.failureReason) : why
            return .transition(next, [])

        case .compensationRequested(let actor, let reason):
            switch state.status {
            case .completed, .compensated, .compensating:
                return .rejected("saga \(state.id) is \(state.status.rawValue); it cannot be compensated now")
            case .running, .waiting, .needsAttention:
                if state.status == .needsAttention, stoppedPhase(state) == .compensation {
                    return .rejected("saga \(state.id) is stuck in a compensation; retry it instead")
                }
                if definition.isForwardOnly(state.currentStep) {
                    return .rejected("saga \(state.id) is past its pivot step; it can only go forward")
                }
                var requested = state
                recordOperatorAction(
                    &requested, phase: .action, outcome: .compensationRequested, actor: actor, reason: reason, now: now)
                return compensate(
                    requested, from: definition.groupRange(of: state.currentStep)?.upperBound ?? state.currentStep,
                    reason: "\(reason) (compensation requested by \(actor))")
            }
        }
    }

    // MARK: - Resolved by hand

    private func resolved(_ state: SagaState, by actor: String, reason: String, patch: JSONObject, now: Date) -> SagaDecision {
        guard state.status == .needsAttention else {
            return .rejected(
                "saga \(state.id) is \(state.status.rawValue); only a saga that needs attention can be resolved by hand (its handlers may still report)"
            )
        }
        var next = state
        next.payload = state.payload.merging(patch: patch)
        next.reapAttempts = 0
        func recordResolved(step: Int, phase: StepPhase, attempt: Int) {
            next.history.append(
                StepRecord(
                    step: step, stepName: definition.steps[step].name, phase: phase, attempt: attempt, startedAt: now, finishedAt: now,
                    outcome: .completed, actor: actor, reason: "resolved by hand: \(reason)"))
            Self.compact(&next.history, step: step, phase: phase)
        }
        if stoppedPhase(state) == .compensation {
            // The compensation that kept failing was done by hand: on with the earlier ones.
            next.status = .compensating
            next.failureReason = Self.compensationReason(in: state.failureReason) ?? state.failureReason
            recordResolved(step: state.currentStep, phase: .compensation, attempt: state.attempt)
            return compensate(next, before: state.currentStep, reason: nil)
        }
        // The action (past the pivot, or one the reaper gave up on) was done by hand: forward.
        next.status = .running
        next.failureReason = nil
        let group = definition.groupRange(of: state.currentStep)
        for member in group.map(Array.init) ?? [state.currentStep] {
            if group != nil, [.completed, .skipped].contains(progress(of: member, in: state)) { continue }
            let attempt = state.history.last { $0.step == member && $0.phase == .action }?.attempt ?? state.attempt
            recordResolved(step: member, phase: .action, attempt: attempt)
        }
        let (moved, commands) = moveForward(next, to: (group?.upperBound ?? state.currentStep) + 1, now: now)
        return .transition(moved, commands)
    }

    // MARK: - Fallbacks

    /// Whether step `index` runs its fallback: it has one, and its primary action failed for good
    /// (or was not tried: its circuit was open).
    public func usesFallback(_ index: Int, in state: SagaState) -> Bool {
        definition.steps[index].fallback != nil
            && state.history.contains { $0.step == index && $0.phase == .action && $0.outcome == .failed }
    }

    /// The first attempt of step `index`'s fallback: the one after the primary's last.
    private func fallbackStart(_ index: Int, in state: SagaState) -> Int {
        (state.history.first { $0.step == index && $0.phase == .action && $0.outcome == .failed }?.attempt ?? 0) + 1
    }

    // MARK: - Waits

    /// A signal: completes the wait that waits for it, or is kept for a wait ahead, or is ignored.
    private func signalReceived(_ state: SagaState, name: String, payload: JSONObject, by sender: String?, now: Date) -> SagaDecision {
        guard let wait = definition.waitStep(for: name) else {
            let signals = definition.steps.compactMap { $0.wait?.signal }
            return .rejected(
                "saga definition '\(definition.name)' version \(definition.version) waits for no signal named '\(name)' (its signals: \(signals.isEmpty ? "none" : signals.joined(separator: ", ")))"
            )
        }
        let stepName = definition.steps[wait].name
        if state.status.isTerminal {
            return .ignored("saga \(state.id) is already \(state.status.rawValue): the signal came too late")
        }
        if let ended = state.history.last(where: { $0.step == wait && $0.phase == .action }) {
            return .ignored(
                "the wait '\(stepName)' of saga \(state.id) already ended (\(ended.outcome.rawValue)\(ended.reason.map { ": \($0)" } ?? ""))"
            )
        }
        if state.status == .compensating {
            return .ignored("saga \(state.id) is compensating")
        }
        var next = state
        next.payload = state.payload.merging(patch: payload)
        let waiting = state.status == .waiting && state.currentStep == wait
        let lastForward = definition.groupRange(of: state.currentStep)?.upperBound ?? state.currentStep
        guard waiting || wait > lastForward else {
            return .ignored("saga \(state.id) is past the wait '\(stepName)'")
        }
        next.history.append(
            StepRecord(
                step: wait, stepName: stepName, phase: .action, attempt: 1, startedAt: waiting ? state.updatedAt : now, finishedAt: now,
                outcome: .completed, actor: sender,
                reason: waiting ? "signal '\(name)'" : "signal '\(name)', before the saga reached the wait"))
        next.reapAttempts = 0
        guard waiting else { return .transition(next, []) }
        let (moved, commands) = moveForward(next, to: wait + 1, now: now)
        return .transition(moved, commands)
    }

    /// What a waiting saga waits for and until when: its wait step, the wait, and the time its
    /// timeout passes (it began to wait at its last update: ``apply(_:to:now:)`` keeps it while
    /// the saga waits at that step);
    /// `nil` when it is not waiting. The reaper ends the wait at its first pass after `until`.
    public func waiting(_ state: SagaState) -> (step: Int, wait: SagaWait, until: Date)? {
        guard state.status == .waiting, definition.steps.indices.contains(state.currentStep),
            let wait = definition.steps[state.currentStep].wait
        else { return nil }
        return (state.currentStep, wait, state.updatedAt.addingTimeInterval(wait.timeout.seconds))
    }

    /// The reaper found a waiting saga: past the wait's timeout it is compensated or goes on.
    private func waitExpired(_ state: SagaState, now: Date) -> SagaDecision {
        guard let (_, wait, expires) = waiting(state) else {
            return .ignored("saga \(state.id) is \(state.status.rawValue), not waiting for a signal")
        }
        guard now >= expires else { return .ignored("saga \(state.id) waits for signal '\(wait.signal)' until \(expires)") }
        let stepName = definition.steps[state.currentStep].name
        let why = "no signal '\(wait.signal)' within \(wait.timeout.readable)"
        var next = state
        next.status = .running
        switch wait.onTimeout {
        case .compensate:
            record(
                &next, step: state.currentStep, phase: .action, attempt: 1, startedAt: state.updatedAt, now: now, outcome: .failed,
                error: why)
            return compensate(next, from: state.currentStep, reason: "step '\(stepName)': \(why)")
        case .continue:
            next.history.append(
                StepRecord(
                    step: state.currentStep, stepName: stepName, phase: .action, attempt: 0, startedAt: state.updatedAt, finishedAt: now,
                    outcome: .skipped, reason: "\(why): continued as declared"))
            let (moved, commands) = moveForward(next, to: state.currentStep + 1, now: now)
            return .transition(moved, commands)
        }
    }

    // MARK: - Helpers

    /// A failed attempt of an action: retried by the step's policy, or the end of the step.
    private func actionFailed(
        _ state: SagaState, step: Int, attempt: Int, error: String, retryable: Bool, timedOut: Bool, startedAt: Date, now: Date
    ) -> SagaDecision {
        let policy = definition.steps[step].options.retry
        let forwardOnly = definition.isForwardOnly(step)
        let onFallback = usesFallback(step, in: state)
        // A fallback has the step's retry policy, counted from its own first attempt.
        let tries = onFallback ? attempt - fallbackStart(step, in: state) + 1 : attempt
        var next = state
        if retryable && (forwardOnly || tries < policy.maxAttempts) {
            record(
                &next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .retrying, error: error,
                timedOut: timedOut)
            next.attempt = attempt + 1
            let delay = policy.delay(afterAttempt: attempt)
            return .transition(next, [ScheduledCommand(currentCommand(next, phase: .action), delay: delay)])
        }
        // Whether an attempt of this step may have committed its effect without saying so.
        let uncertain = timedOut || state.history.contains { $0.step == step && $0.phase == .action && $0.timedOut == true }
        record(
            &next, step: step, phase: .action, attempt: attempt, startedAt: startedAt, now: now, outcome: .failed, error: error,
            timedOut: timedOut)
        let stepName = definition.steps[step].name
        if !onFallback, retryable, definition.steps[step].fallback != nil {
            // The primary failed for good with an error or a timeout: the fallback runs instead
            // (its attempts follow the primary's, so late outcomes of the primary are stale).
            next.attempt = attempt + 1
            return .transition(next, [ScheduledCommand(currentCommand(next, phase: .action))])
        }
        if forwardOnly {
            next.status = .needsAttention
            next.failureReason = "step '\(stepName)' failed after the pivot and cannot be compensated: \(error)"
            return .transition(next, [])
        }
        let why = retryable ? "failed \(attempt) time(s)" : "failed"
        let reason = "step '\(stepName)' \(why): \(error)"
        // A timed-out attempt may have committed: undo the step itself too.
        return uncertain ? compensate(next, from: step, reason: reason) : compensate(next, before: step, reason: reason)
    }

    /// The phase a saga is in at its current step: ``SagaState/phase`` while it runs or
    /// compensates; for a saga that needs attention, the phase it stopped in (an action past the
    /// pivot, or a compensation that failed), which ``SagaState/phase`` cannot tell.
    public func phase(of state: SagaState) -> StepPhase {
        state.status == .needsAttention ? stoppedPhase(state) : state.phase
    }

    /// The phase a saga that needs attention stopped in: compensation once it has compensated
    /// anything or moved back from a later step, or when its last record of the current step is
    /// a compensation (a compensation that failed, or that the reaper gave up on).
    func stoppedPhase(_ state: SagaState) -> StepPhase {
        if state.history.last(where: { $0.step == state.currentStep })?.phase == .compensation { return .compensation }
        // A saga never runs forward again after compensating anything. (The members of the
        // parallel group it stopped in are after its current step, the group's first.)
        let lastForward = definition.groupRange(of: state.currentStep)?.upperBound ?? state.currentStep
        // (Nor is a signal that arrived before the saga reached its wait.)
        let movedBack = state.history.contains {
            $0.phase == .compensation || ($0.step > lastForward && definition.steps[$0.step].wait == nil)
        }
        if movedBack { return .compensation }
        return .action
    }

    /// Why `event`, decided on `aimed` and refused by a version conflict, must not be decided
    /// again on `current` (the state reloaded after the conflict); `nil` when it still applies.
    ///
    /// Handler outcomes name their step, phase and attempt, and ``apply(_:to:now:)`` ignores them
    /// when they do not fit. The others are judged here: the reaper's `foundStalled` applies only
    /// to a saga that did not change at all (any change is progress), an operator's resolution only
    /// to a saga still at the same status, step, phase and attempt, an operator's retry or
    /// compensation to that too or to a running saga at a later attempt of the same step and phase
    /// (it retried by itself meanwhile); a deadline applies to whatever state the saga is in.
    public static func staleness(of event: SagaEvent, aimedAt aimed: SagaState, reloaded current: SagaState) -> String? {
        switch event {
        case .stepCompleted, .stepFailed, .stepTimedOut, .compensationCompleted, .compensationFailed, .deadlinePassed,
            .signalReceived, .waitExpired:
            return nil
        case .foundStalled:
            guard current.version != aimed.version else { return nil }
            return
                "saga \(current.id) changed (version \(aimed.version) → \(current.version)) since it was found stalled; it is not stalled"
        case .resolvedByOperator:
            return samePosition(aimed, current) ? nil : movedMeanwhile(from: aimed, to: current)
        case .retryRequested, .compensationRequested, .stopRequested:
            // A running saga that retried its step by itself meanwhile (a later attempt of the
            // same step and phase) is where the operator saw it: retrying it now, or compensating
            // it, still means the same.
            let retriedByItself =
                current.status == .running && aimed.status == .running && current.currentStep == aimed.currentStep
                && current.phase == aimed.phase && current.attempt > aimed.attempt
            return samePosition(aimed, current) || retriedByItself ? nil : movedMeanwhile(from: aimed, to: current)
        }
    }

    /// Whether two states of a saga are at the same status, step, phase and attempt.
    private static func samePosition(_ aimed: SagaState, _ current: SagaState) -> Bool {
        current.status == aimed.status && current.currentStep == aimed.currentStep && current.phase == aimed.phase
            && current.attempt == aimed.attempt
    }

    /// Why an operator's request aimed at `aimed` does not apply to `current`.
    private static func movedMeanwhile(from aimed: SagaState, to current: SagaState) -> String {
        "saga \(current.id) moved meanwhile (from \(aimed.status.rawValue) at step \(aimed.currentStep + 1) attempt \(aimed.attempt) to \(current.status.rawValue) at step \(current.currentStep + 1) attempt \(current.attempt)); look at it again before acting"
    }

    /// Why an event for (step, phase, attempt) does not apply to `state`, or `nil` when it does.
    private func staleness(_ state: SagaState, step: Int, phase: StepPhase, attempt: Int) -> String? {
        if state.status.isTerminal {
            return "saga \(state.id) is already \(state.status.rawValue)"
        }
        if state.status == .waiting {
            return
                "saga \(state.id) waits for a signal at \(definition.describeStep(state.currentStep)), not for \(definition.describeStep(step)) \(phase.rawValue) attempt \(attempt)"
        }
        if state.phase != phase || state.currentStep != step || state.attempt != attempt {
            return
                "saga \(state.id) waits for \(definition.describeStep(state.currentStep)) \(state.phase.rawValue) attempt \(state.attempt), not \(definition.describeStep(step)) \(phase.rawValue) attempt \(attempt)"
        }
        return nil
    }

    /// Moves a running saga forward to step `index`, or to the first step after it whose
    /// condition holds for the saga's data, recording the steps in between as skipped; completes
    /// the saga when no step is left.
    func moveForward(_ state: SagaState, to index: Int, now: Date) -> (SagaState, [ScheduledCommand]) {
        var next = state
        var index = index
        while index < definition.steps.count {
            if let group = definition.groupRange(of: index) {
                // A parallel group starts every member whose condition holds, at once.
                var commands: [ScheduledCommand] = []
                for member in group {
                    if let condition = definition.steps[member].condition, !condition.evaluate(next.payload) {
                        recordSkipped(&next, step: member, condition: condition, now: now)
                    } else {
                        commands.append(ScheduledCommand(makeCommand(next, step: member, phase: .action, attempt: 1)))
                    }
                }
                if commands.isEmpty {
                    index = group.upperBound + 1
                    continue
                }
                next.currentStep = group.lowerBound
                next.attempt = 1
                return (next, commands)
            }
            if let condition = definition.steps[index].condition, !condition.evaluate(next.payload) {
                recordSkipped(&next, step: index, condition: condition, now: now)
                index += 1
                continue
            }
            if let breaker = definition.steps[index].fallback?.breaker,
                case .open(let until) = (circuits[definition.circuitKey(ofStep: index)] ?? .closed).position(breaker, at: now)
            {
                // The primary's circuit is open: the fallback runs at once (recorded as the
                // primary failing without an attempt).
                next.history.append(
                    StepRecord(
                        step: index, stepName: definition.steps[index].name, phase: .action, attempt: 0, startedAt: now, finishedAt: now,
                        outcome: .failed,
                        error:
                            "circuit '\(definition.circuitKey(ofStep: index))' is open until \(until.formatted(.iso8601)): the fallback runs"
                    ))
            }
            if definition.steps[index].wait != nil {
                // A signal that arrived early completed the wait already.
                if next.history.contains(where: { $0.step == index && $0.outcome == .completed }) {
                    index += 1
                    continue
                }
                next.status = .waiting
                next.currentStep = index
                next.attempt = 1
                return (next, [])
            }
            break
        }
        guard index < definition.steps.count else {
            next.status = .completed
            next.currentStep = definition.steps.count - 1
            return (next, [])
        }
        next.status = .running
        next.currentStep = index
        next.attempt = 1
        return (next, [ScheduledCommand(currentCommand(next, phase: .action))])
    }

    /// Records that step `step` was skipped because `condition` did not hold.
    private func recordSkipped(_ state: inout SagaState, step: Int, condition: SagaCondition, now: Date) {
        state.history.append(
            StepRecord(
                step: step, stepName: definition.steps[step].name, phase: .action, attempt: 0, startedAt: now, finishedAt: now,
                outcome: .skipped, reason: "condition not met: \(condition)"))
    }

    /// Starts or continues compensation with the last compensatable step before `step`.
    /// The failure reason of a compensating saga that stops (needs attention): why it stopped,
    /// then why it was compensating, so that neither is lost.
    static func stopping(_ stop: String, compensatingBecause original: String?) -> String {
        guard let original, !original.isEmpty else { return stop }
        return stop + compensatingMarker + original + ")"
    }

    /// Why a compensating saga that stopped was compensating (what ``stopping(_:compensatingBecause:)``
    /// kept), for a retry that resumes the compensation; `nil` when the reason does not say.
    static func compensationReason(in reason: String?) -> String? {
        guard let reason, let marker = reason.range(of: compensatingMarker), reason.hasSuffix(")") else { return nil }
        return String(reason[marker.upperBound...].dropLast())
    }

    private static let compensatingMarker = " (compensating because: "

    private func compensate(_ state: SagaState, before step: Int, reason: String?) -> SagaDecision {
        compensate(state, from: step - 1, reason: reason)
    }

    /// Compensates the last step at or before `index` that has a compensation and was not
    /// skipped (nor, in a parallel group, failed without a doubt: see
    /// ``needsCompensation(_:in:)``); compensated when none is left.
    func compensate(_ state: SagaState, from index: Int, reason: String?) -> SagaDecision {
        var next = state
        if let reason { next.failureReason = reason }
        next.reapAttempts = 0
        let candidates = stride(from: index, through: 0, by: -1)
        guard let target = candidates.first(where: { needsCompensation($0, in: state) }) else {
            next.status = .compensated
            return .transition(next, [])
        }
        next.status = .compensating
        next.currentStep = target
        next.attempt = 1
        return .transition(next, [ScheduledCommand(currentCommand(next, phase: .compensation))])
    }

    func record(
        _ state: inout SagaState, step: Int, phase: StepPhase, attempt: Int, startedAt: Date, now: Date, outcome: StepOutcome,
        error: String? = nil, timedOut: Bool = false
    ) {
        state.history.append(
            StepRecord(
                step: step, stepName: definition.steps[step].name, phase: phase, attempt: attempt, startedAt: startedAt,
                finishedAt: now, outcome: outcome, error: error, timedOut: timedOut ? true : nil
            )
        )
        Self.compact(&state.history, step: step, phase: phase)
        if outcome != .resent { state.reapAttempts = 0 }
        state.updatedAt = now
    }

    /// Records an operator's action on the current step: who and why, at `now`.
    /// An operator's reason with the move of the saga's deadline that came with the action:
    /// `"outage over (deadline moved from 2026-12-03T10:00:00Z to 2026-12-03T12:00:00Z)"`.
    static func reason(_ reason: String?, moving deadline: Date?, _ change: SagaDeadlineChange) -> String? {
        let from = deadline.map { " from \($0.formatted(.iso8601))" } ?? ""
        let note: String
        switch change {
        case .keep: return reason
        case .remove: note = "deadline\(from) removed"
        case .set(let date): note = "deadline moved\(from) to \(date.formatted(.iso8601))"
        }
        return reason.map { "\($0) (\(note))" } ?? note
    }

    func recordOperatorAction(
        _ state: inout SagaState, phase: StepPhase, outcome: StepOutcome, actor: String, reason: String?, now: Date
    ) {
        state.history.append(
            StepRecord(
                step: state.currentStep, stepName: definition.steps[state.currentStep].name, phase: phase, attempt: state.attempt,
                startedAt: now, finishedAt: now, outcome: outcome, actor: actor, reason: reason
            )
        )
        Self.compact(&state.history, step: state.currentStep, phase: phase)
        state.updatedAt = now
    }

    /// Keeps the first record of (step, phase) and its latest ``retainedRecordsPerStep``; drops
    /// the ones between, but never an operator's action. The first timed-out record is kept too (it decides whether the step is
    /// compensated).
    static func compact(_ history: inout [StepRecord], step: Int, phase: StepPhase) {
        // Operator actions are never dropped: who asked for what stays in the history.
        let indices = history.indices.filter {
            history[$0].step == step && history[$0].phase == phase && !history[$0].outcome.isOperatorAction
        }
        guard indices.count > retainedRecordsPerStep + 1 else { return }
        var keep = Set([indices[0]] + indices.suffix(retainedRecordsPerStep))
        if let timedOut = indices.first(where: { history[$0].timedOut == true }) { keep.insert(timedOut) }
        let drop = Set(indices).subtracting(keep)
        history = history.indices.filter { !drop.contains($0) }.map { history[$0] }
    }

    private func currentCommand(_ state: SagaState, phase: StepPhase) -> SagaCommand {
        makeCommand(state, step: state.currentStep, phase: phase, attempt: state.attempt)
    }

    /// The command of step `index` in `phase`, attempt `attempt`, for saga `state`.
    public func makeCommand(_ state: SagaState, step index: Int, phase: StepPhase, attempt: Int) -> SagaCommand {
        let step = definition.steps[index]
        let action = usesFallback(index, in: state) ? step.fallback?.action ?? step.action : step.action
        let name = phase == .action ? action : (step.compensation ?? step.action)
        return SagaCommand(
            sagaID: state.id, sagaName: state.name, command: name, step: index, stepName: step.name, phase: phase, attempt: attempt)
    }
}
