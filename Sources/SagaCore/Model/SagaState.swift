public import Foundation

/// A saga instance id. Callers may choose it (to make starts idempotent); otherwise it is a UUID.
public typealias SagaID = String

/// Where a saga is in its life.
public enum SagaStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Running actions forward.
    case running
    /// Running compensations backward.
    case compensating
    /// Stopped at a wait step until its signal arrives (``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``).
    /// Not stalled: the reaper leaves it alone until the wait's timeout passes.
    case waiting
    /// Every step completed. Terminal.
    case completed
    /// Every needed compensation completed. Terminal.
    case compensated
    /// Stopped: a compensation failed too often, or the reaper gave up. Terminal until an operator
    /// acts (retry or compensate from the `saga` CLI).
    case needsAttention

    /// Whether the saga will never move again by itself.
    public var isTerminal: Bool {
        switch self {
        case .running, .compensating, .waiting: false
        case .completed, .compensated, .needsAttention: true
        }
    }

    /// Whether the saga is over for good (completed or compensated): it stands at no step. A saga
    /// that needs attention has stopped at one, for an operator.
    package var hasEnded: Bool { self == .completed || self == .compensated }

    /// The statuses of sagas that have not ended (``hasEnded``): running, compensating, waiting,
    /// needing attention.
    package static let unfinished = allCases.filter { !$0.hasEnded }
}

/// Whether a command performs a step or undoes it.
public enum StepPhase: String, Sendable, Hashable, Codable {
    /// The step's action.
    case action
    /// The step's compensation.
    case compensation
}

/// What an operator's action does to a saga's deadline (``SagaEvent/retryRequested(by:reason:deadline:)``).
public enum SagaDeadlineChange: Sendable, Hashable {
    /// The deadline stays.
    case keep
    /// The saga has no deadline any more.
    case remove
    /// The deadline is this instant.
    case set(Date)
}

/// What happened to one attempt of a step.
public enum StepOutcome: String, Sendable, Hashable, Codable {
    /// The attempt succeeded.
    case completed
    /// The attempt failed and will be retried.
    case retrying
    /// The attempt failed for good (starts compensation, or needs attention).
    case failed
    /// The reaper found the step stalled and sent its command again.
    case resent
    /// An operator asked to run the step again (``StepRecord/actor`` and ``StepRecord/reason``
    /// say who and why).
    case retryRequested
    /// An operator asked to compensate the saga at this step (``StepRecord/actor`` and
    /// ``StepRecord/reason`` say who and why).
    case compensationRequested
    /// The step's condition did not hold when the saga reached it: the step was not run and is
    /// never compensated (``StepRecord/reason`` says which condition). Its record has attempt 0.
    case skipped

    /// Whether an operator, not a handler or the reaper, made this record.
    public var isOperatorAction: Bool { self == .retryRequested || self == .compensationRequested }
}

/// One entry of a saga's step history.
public struct StepRecord: Sendable, Hashable, Codable {
    /// The step index (0-based).
    public var step: Int
    /// The step name.
    public var stepName: String
    /// Action or compensation.
    public var phase: StepPhase
    /// The attempt number (1-based; 0 for a skipped step, which is never attempted).
    public var attempt: Int
    /// When the handler started (for a skipped step: when the condition was evaluated).
    public var startedAt: Date
    /// When the outcome was recorded.
    public var finishedAt: Date
    /// The outcome.
    public var outcome: StepOutcome
    /// The error, for failed attempts.
    public var error: String?
    /// `true` when the attempt timed out: its effect may have committed without the saga knowing
    /// (`nil` otherwise, and in records written before SagaKit recorded timeouts).
    public var timedOut: Bool?
    /// Who asked, for an operator's action (``StepOutcome/isOperatorAction``); `nil` otherwise.
    public var actor: String?
    /// Why, for an operator's action, when they said; for a skipped step, the condition that did
    /// not hold (`condition not met: amount > 1000`); `nil` otherwise.
    public var reason: String?
    /// The process that recorded the outcome — the instance `saga services` lists, such as
    /// `payment-2@host-a` — when a participant recorded it; `nil` for records written elsewhere
    /// (a manager, the `saga` tool) and before SagaKit recorded it. Says which release ran a
    /// step during a rolling upgrade, and where to find the step's log lines.
    public var instance: String?

    /// Creates a record.
    public init(
        step: Int, stepName: String, phase: StepPhase, attempt: Int, startedAt: Date, finishedAt: Date, outcome: StepOutcome,
        error: String? = nil, timedOut: Bool? = nil, actor: String? = nil, reason: String? = nil, instance: String? = nil
    ) {
        self.step = step
        self.stepName = stepName
        self.phase = phase
        self.attempt = attempt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.outcome = outcome
        self.error = error
        self.timedOut = timedOut
        self.actor = actor
        self.reason = reason
        self.instance = instance
    }
}

/// The persisted state of one saga instance.
public struct SagaState: Sendable, Hashable, Codable {
    /// The saga id.
    public var id: SagaID
    /// The definition's name.
    public var name: String
    /// The status.
    public var status: SagaStatus
    /// The step whose command is current: the action being run (running) or the compensation
    /// being run (compensating); never a skipped step while the saga runs. In a parallel group,
    /// the group's first step (its members' progress is in the history); while waiting, the wait
    /// step. For terminal sagas,
    /// the last step that ran (for a completed saga, the definition's last step, run or skipped).
    public var currentStep: Int
    /// The attempt number of the current command (1-based).
    public var attempt: Int
    /// The business payload, a JSON object updated by shallow merge (see
    /// `Dictionary.merging(patch:)`): the start payload with every completed step's patch, the
    /// data that step conditions (``SagaCondition``) are evaluated against.
    public var payload: JSONObject
    /// Trace and correlation ids (for example `traceparent`, `correlationId`).
    public var context: [String: String]
    /// The attempts of every step, in order. For a step attempted very often (retried forever
    /// after the pivot) only its first record and its latest
    /// ``SagaStateMachine/retainedRecordsPerStep`` records per phase are kept.
    public var history: [StepRecord]
    /// Why the saga is compensating or needs attention.
    public var failureReason: String?
    /// When the saga must be finished (from the definition's deadline).
    public var deadline: Date?
    /// How many times the reaper re-sent the current command since the saga last moved.
    public var reapAttempts: Int
    /// Creation time.
    public var createdAt: Date
    /// Last change.
    public var updatedAt: Date
    /// Optimistic-concurrency version, incremented by every committed transition.
    public var version: Int64

    /// Creates a state.
    public init(
        id: SagaID, name: String, status: SagaStatus, currentStep: Int, attempt: Int, payload: JSONObject,
        context: [String: String], history: [StepRecord], failureReason: String? = nil, deadline: Date? = nil,
        reapAttempts: Int = 0, createdAt: Date, updatedAt: Date, version: Int64
    ) {
        self.id = id
        self.name = name
        self.status = status
        self.currentStep = currentStep
        self.attempt = attempt
        self.payload = payload
        self.context = context
        self.history = history
        self.failureReason = failureReason
        self.deadline = deadline
        self.reapAttempts = reapAttempts
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.version = version
    }

    /// The phase of the current command.
    public var phase: StepPhase { status == .compensating ? .compensation : .action }

    /// Whether step `index` was skipped because its condition did not hold.
    public func wasSkipped(_ index: Int) -> Bool {
        history.contains { $0.step == index && $0.outcome == .skipped }
    }
}

extension SagaState {
    /// The context key under which ``SagaState/definitionVersion`` is kept.
    public static let definitionVersionKey = "sagakit-definition-version"

    /// The key under which ``context`` records the prefix of the topology the saga was started
    /// on (`SagaTopology.contextKey` in the Participant module), so that the reapers of other
    /// deployments sharing the store leave it alone.
    public static let topologyKey = "sagakit-topology"

    /// The prefix of the topology the saga was started on (``topologyKey``); `nil` for a saga
    /// stored before SagaKit recorded it.
    public var topology: String? { context[Self.topologyKey] }

    /// The key under which ``context`` records the saga's incarnation: when it was started (in
    /// milliseconds, base 36), set by ``SagaStateMachine/begin(id:payload:context:now:)``. A saga
    /// started with the id of one that was purged (`saga purge`) is another incarnation, and its
    /// idempotency keys (``SagaCommand/idempotencyKey(incarnation:)``) differ from the purged
    /// one's: a handler that applied the old saga's effect does not take the new saga's step for
    /// done.
    public static let incarnationKey = "sagakit-incarnation"

    /// The saga's incarnation (``incarnationKey``); `nil` for a saga started before SagaKit
    /// recorded it, whose idempotency keys stay as they were.
    public var incarnation: String? { context[Self.incarnationKey] }

    /// The incarnation of a saga started at `date`.
    public static func incarnation(startedAt date: Date) -> String {
        String(Int64((date.timeIntervalSince1970 * 1000).rounded()), radix: 36)
    }

    /// The version of the definition the saga is pinned to (set at start, kept in the context
    /// under ``definitionVersionKey``); 1 when absent (sagas started before versions existed).
    public var definitionVersion: Int {
        get { context[Self.definitionVersionKey].flatMap { Int($0) } ?? 1 }
        set { context[Self.definitionVersionKey] = String(newValue) }
    }
}
