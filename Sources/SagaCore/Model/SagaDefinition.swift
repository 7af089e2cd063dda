import Foundation

/// The blueprint of a saga: an ordered list of steps, each with an action command, an
/// optional compensation command and an optional condition (``SagaCondition``).
///
/// Build one with ``SagaBuilder``:
/// ```swift
/// let orderSaga = try SagaBuilder("order")
///     .step("reserve-stock", action: "inventory.reserve", compensation: "inventory.release")
///     .step("charge-card", action: "payment.charge", compensation: "payment.refund")
///     .step("fraud-review", action: "fraud.review", when: .greaterThan("amount", 1000))
///     .step("ship", action: "shipping.ship", options: .pivot)
///     .build()
/// ```
public struct SagaDefinition: Sendable, Hashable {
    /// The saga's unique name.
    public let name: String
    /// The definition's version (1 unless set with ``SagaBuilder/version(_:)``). A saga is pinned
    /// to the version it started with; change the version whenever the content changes.
    public let version: Int
    /// The steps in execution order.
    public let steps: [SagaStep]
    /// How long a saga may run before the ``SagaEvent/deadlinePassed`` event applies; `nil` for no
    /// deadline.
    public let deadline: Duration?
    /// Retry policy for compensations (they must eventually succeed; after
    /// `maxAttempts` the saga needs attention).
    public let compensationRetry: RetryPolicy

    init(name: String, version: Int, steps: [SagaStep], deadline: Duration?, compensationRetry: RetryPolicy) {
        self.name = name
        self.version = version
        self.steps = steps
        self.deadline = deadline
        self.compensationRetry = compensationRetry
    }

    /// The first step at or after `index` whose condition holds for `data` (see
    /// ``SagaStep/condition``); `nil` when every one from there on is skipped.
    public func firstApplicableStep(from index: Int, data: JSONObject) -> Int? {
        guard index < steps.count else { return nil }
        return steps[index...].firstIndex { $0.applies(to: data) }
    }

    /// The index of the pivot step, if there is one.
    public var pivotIndex: Int? { steps.firstIndex(where: \.options.isPivot) }

    /// Whether step `index` is at or after the pivot (failures there are retried forward).
    public func isForwardOnly(_ index: Int) -> Bool {
        guard let pivotIndex else { return false }
        return index >= pivotIndex
    }

    /// Every command (action or compensation) this saga sends. A wait step sends none.
    public var commands: [String] {
        steps.filter { $0.wait == nil }.flatMap {
            [$0.action] + ($0.fallback.map { [$0.action] } ?? []) + ($0.compensation.map { [$0] } ?? [])
        }
    }

    /// The key of step `index`'s circuit breaker in the store: `<saga>/<step>` (every version of
    /// the definition shares it).
    public func circuitKey(ofStep index: Int) -> String { "\(name)/\(steps[index].name)" }

    /// The index of the wait step that waits for `signal` (see
    /// ``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``).
    public func waitStep(for signal: String) -> Int? {
        steps.firstIndex { $0.wait?.signal == signal }
    }

    /// The indices of the parallel group that step `index` belongs to (see
    /// ``SagaBuilder/parallel(_:_:)``), or `nil` when the step runs on its own.
    public func groupRange(of index: Int) -> ClosedRange<Int>? {
        guard steps.indices.contains(index), let group = steps[index].group else { return nil }
        var lower = index
        while lower > 0, steps[lower - 1].group == group { lower -= 1 }
        var upper = index
        while upper + 1 < steps.count, steps[upper + 1].group == group { upper += 1 }
        return lower...upper
    }

    /// The parallel groups of the definition: each group's name and step indices, in order.
    public var groups: [(name: String, steps: ClosedRange<Int>)] {
        var groups: [(name: String, steps: ClosedRange<Int>)] = []
        var index = 0
        while index < steps.count {
            if let name = steps[index].group, let range = groupRange(of: index) {
                groups.append((name, range))
                index = range.upperBound + 1
            } else {
                index += 1
            }
        }
        return groups
    }

    /// The step index and phase that a command belongs to (never a wait step: it has no command).
    public func locate(command: String) -> (index: Int, phase: StepPhase)? {
        for (index, step) in steps.enumerated() where step.wait == nil {
            if step.action == command || step.fallback?.action == command { return (index, .action) }
            if step.compensation == command { return (index, .compensation) }
        }
        return nil
    }
}

/// One step of a saga.
public struct SagaStep: Sendable, Hashable {
    /// The step name, unique in the saga.
    public let name: String
    /// The command that performs the step (a routing key on the bus).
    public let action: String
    /// The command that semantically undoes the step; `nil` when there is nothing to undo.
    public let compensation: String?
    /// Pivot, retry and timeout options.
    public let options: StepOptions
    /// When the step runs: `nil` for always; otherwise the step runs only when the condition
    /// holds against the saga's data as the saga reaches it, and is skipped (never run, never
    /// compensated) when it does not. See ``SagaCondition``.
    public let condition: SagaCondition?
    /// The name of the parallel group the step belongs to (see ``SagaBuilder/parallel(_:_:)``);
    /// `nil` for a step that runs on its own. The steps of a group are adjacent in
    /// ``SagaDefinition/steps``.
    public let group: String?
    /// For a wait step (``SagaBuilder/wait(_:for:timeout:onTimeout:when:)``): the signal it waits
    /// for and what happens when none arrives in time; `nil` for a step that runs a command. A wait
    /// step's ``action`` is its signal's name, and it sends no command.
    public let wait: SagaWait?
    /// The step's fallback (``SagaFallback``): an alternative action that runs when the primary
    /// action fails for good or its circuit is open; `nil` for none.
    public let fallback: SagaFallback?

    init(
        name: String, action: String, compensation: String?, options: StepOptions, condition: SagaCondition? = nil, group: String? = nil,
        wait: SagaWait? = nil, fallback: SagaFallback? = nil
    ) {
        self.fallback = fallback
        self.name = name
        self.action = action
        self.compensation = compensation
        self.options = options
        self.condition = condition
        self.group = group
        self.wait = wait
    }

    /// Whether the step runs for a saga with this data: `true` without a condition.
    public func applies(to data: JSONObject) -> Bool {
        condition?.evaluate(data) ?? true
    }
}

/// What a wait step waits for: a signal, delivered by `SagaManager.signal(_:name:payload:by:)` (or
/// `saga signal`), for at most `timeout`.
public struct SagaWait: Sendable, Hashable {
    /// What happens when no signal arrives within the timeout.
    public enum TimeoutAction: String, Sendable, Hashable, Codable {
        /// The saga is compensated (the steps before the wait, newest first). Only before the pivot.
        case compensate
        /// The saga goes on without the signal (the wait is recorded as skipped).
        case `continue`
    }

    /// The signal's name, unique in the saga.
    public var signal: String
    /// How long the saga waits once it reaches the step.
    public var timeout: Duration
    /// What happens when the timeout passes without the signal.
    public var onTimeout: TimeoutAction

    /// Creates a wait.
    public init(signal: String, timeout: Duration, onTimeout: TimeoutAction) {
        self.signal = signal
        self.timeout = timeout
        self.onTimeout = onTimeout
    }
}

/// A step's fallback: an alternative action (another provider, a degraded mode) that runs instead
/// of the step's primary action when that fails for good with an error or a timeout (a business
/// refusal, `failAndCompensate`, still compensates), or at once while the primary's circuit is
/// open (``CircuitBreakerPolicy``). The step's compensation undoes the step whichever action ran
/// (the payload patch tells which). The fallback is retried with the step's retry policy; when
/// it fails for good too, the saga is compensated as for any step.
public struct SagaFallback: Sendable, Hashable {
    /// The fallback's command.
    public var action: String
    /// The circuit breaker that guards the primary action; `nil` for none (the fallback then
    /// runs only after the primary failed for good).
    public var breaker: CircuitBreakerPolicy?

    /// Creates a fallback.
    public init(action: String, breaker: CircuitBreakerPolicy? = nil) {
        self.action = action
        self.breaker = breaker
    }
}

/// Options of a step.
public struct StepOptions: Sendable, Hashable {
    /// The point of no return: from this step on, failures are retried forward until success and
    /// nothing is compensated.
    public var isPivot: Bool
    /// How a failing action is retried.
    public var retry: RetryPolicy
    /// How long the handler may run before the attempt counts as failed (retryable).
    public var timeout: Duration?

    /// Creates options.
    public init(isPivot: Bool = false, retry: RetryPolicy = .default, timeout: Duration? = nil) {
        self.isPivot = isPivot
        self.retry = retry
        self.timeout = timeout
    }

    /// Default options: not a pivot, default retry policy, no timeout.
    public static let `default` = StepOptions()
    /// A pivot step with the default retry policy.
    public static let pivot = StepOptions(isPivot: true)
}

/// How a failing step is retried: up to `maxAttempts` attempts in all, waiting
/// `initialDelay × multiplier^(attempt-1)`, capped at `maxDelay`, between them.
public struct RetryPolicy: Sendable, Hashable {
    /// Total number of attempts, the first included (1 = no retry). Forward-only steps (pivot and
    /// after) ignore it and retry until success.
    public var maxAttempts: Int
    /// The delay before the second attempt.
    public var initialDelay: Duration
    /// The growth factor of the delay.
    public var multiplier: Double
    /// The longest delay.
    public var maxDelay: Duration

    /// Creates a retry policy.
    public init(maxAttempts: Int = 3, initialDelay: Duration = .seconds(1), multiplier: Double = 2, maxDelay: Duration = .seconds(60)) {
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
    }

    /// Three attempts, 1 s then 2 s apart, capped at 60 s.
    public static let `default` = RetryPolicy()
    /// A single attempt.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The delay to wait after failed attempt number `attempt` (1-based) before the next one.
    public func delay(afterAttempt attempt: Int) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let seconds = initialDelay.seconds * pow(multiplier, exponent)
        return .seconds(min(seconds, maxDelay.seconds))
    }
}

extension Duration {
    /// The duration in seconds as a `Double`.
    public var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}

private func pow(_ base: Double, _ exponent: Double) -> Double {
    var result = 1.0
    var remaining = Int(exponent)
    while remaining > 0 && result < 1e12 {
        result *= base
        remaining -= 1
    }
    return result
}

/// Builds and validates a ``SagaDefinition``.
public struct SagaBuilder: Sendable {
    private let name: String
    private var version = 1
    private var steps: [SagaStep] = []
    private var deadline: Duration?
    private var compensationRetry = RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(300))
    private var emptyGroups: [String] = []

    /// Starts a definition with the saga's name.
    public init(_ name: String) { self.name = name }

    /// Adds a step.
    /// - Parameters:
    ///   - name: the step's name, unique in the saga.
    ///   - action: the command that performs it.
    ///   - compensation: the command that undoes it, or `nil` when there is nothing to undo.
    ///   - options: pivot, retry, timeout.
    ///   - condition: when the step runs (`nil`, the default, for always): a step whose condition
    ///     does not hold against the saga's data when the saga reaches it is skipped. The pivot
    ///     cannot have one. See ``SagaCondition``.
    ///   - fallback: an alternative action, guarded by a circuit breaker if you give one (see
    ///     ``SagaFallback``); not for the pivot and the steps after it, nor in a parallel group.
    public func step(
        _ name: String, action: String, compensation: String? = nil, options: StepOptions = .default,
        when condition: SagaCondition? = nil, fallback: SagaFallback? = nil
    ) -> SagaBuilder {
        var copy = self
        copy.steps.append(
            SagaStep(name: name, action: action, compensation: compensation, options: options, condition: condition, fallback: fallback))
        return copy
    }

    /// Adds a parallel group: steps that start together when the saga reaches the group, run at
    /// once, and join. The group completes when every member has completed (or was skipped by
    /// its condition), and the saga moves on with every member's patch merged (give members
    /// distinct keys). When a member fails for good, the group waits for the members still
    /// running, then the completed members and the steps before the group are compensated,
    /// newest first (members in reverse order of their declaration).
    ///
    /// ```swift
    /// .parallel("prepare") { group in
    ///     group
    ///         .step("reserve-stock", action: "inventory.reserve", compensation: "inventory.release")
    ///         .step("authorize-payment", action: "payment.authorize", compensation: "payment.void")
    /// }
    /// ```
    /// - Parameters:
    ///   - name: the group's name, unique among the saga's groups and step names.
    ///   - members: adds the group's steps (at least two; none of them the pivot).
    public func parallel(_ name: String, _ members: (SagaParallelGroup) -> SagaParallelGroup) -> SagaBuilder {
        var copy = self
        let group = members(SagaParallelGroup(name: name))
        copy.steps += group.steps
        if group.steps.isEmpty { copy.emptyGroups.append(name) }
        return copy
    }

    /// Adds a wait step: the saga stops there until the signal named `signal` arrives — a reply, a
    /// human approval, a webhook — delivered by `SagaManager.signal(_:name:payload:by:)` or
    /// `saga signal`. The signal's payload is merged into the saga's data and the saga goes on.
    /// When no signal arrives within `timeout`, the saga is compensated or goes on without it, as
    /// `onTimeout` says (the reaper ends expired waits). A signal that arrives before the saga
    /// reaches the wait is kept, and the wait completes as soon as it is reached; one that arrives
    /// after the wait ended is ignored, and the caller is told why.
    ///
    /// ```swift
    /// .wait("fraud-review", for: "fraud.approved", timeout: .seconds(86_400), when: .greaterThan("amount", 1000))
    /// ```
    /// - Parameters:
    ///   - name: the step's name, unique in the saga.
    ///   - signal: the signal's name, unique in the saga.
    ///   - timeout: how long to wait once the saga reaches the step (more than zero).
    ///   - onTimeout: `.compensate` (the default; only before the pivot) or `.continue`.
    ///   - condition: when the step applies (see ``step(_:action:compensation:options:when:)``).
    public func wait(
        _ name: String, for signal: String, timeout: Duration, onTimeout: SagaWait.TimeoutAction = .compensate,
        when condition: SagaCondition? = nil
    ) -> SagaBuilder {
        appending(
            SagaStep(
                name: name, action: signal, compensation: nil, options: .default, condition: condition,
                wait: SagaWait(signal: signal, timeout: timeout, onTimeout: onTimeout)))
    }

    /// Adds a step as it is (the definition documents rebuild definitions with it).
    func appending(_ step: SagaStep) -> SagaBuilder {
        var copy = self
        copy.steps.append(step)
        return copy
    }

    /// Sets the definition's version (default 1). Give every changed definition a new version:
    /// stores refuse the same name and version with different content.
    public func version(_ version: Int) -> SagaBuilder {
        var copy = self
        copy.version = version
        return copy
    }

    /// Sets a deadline for the whole saga: a saga still running after it is compensated (before the
    /// pivot) or flagged (after it).
    public func deadline(_ deadline: Duration) -> SagaBuilder {
        var copy = self
        copy.deadline = deadline
        return copy
    }

    /// Sets the retry policy of compensations (default: 10 attempts, 1 s doubling up to 5 min).
    public func compensationRetry(_ policy: RetryPolicy) -> SagaBuilder {
        var copy = self
        copy.compensationRetry = policy
        return copy
    }

    /// Validates and returns the definition.
    ///
    /// - Throws: ``SagaError`` `invalidDefinition` naming the saga and the offending step.
    public func build() throws -> SagaDefinition { try build(stored: false) }

    /// Characters a saga or command name cannot hold: they are routing keys on the broker, where
    /// `.` separates words (lifecycle events are routed as `<saga>.<kind>`), `*` and `#` are
    /// wildcards, and blanks and control characters are unreadable in logs.
    private static func routingProblem(_ name: String, dotAllowed: Bool) -> String? {
        if !dotAllowed, name.contains(".") {
            return "contains '.', which separates the words of the lifecycle events' routing keys ('<saga>.<kind>')"
        }
        if let wildcard = name.first(where: { $0 == "*" || $0 == "#" }) {
            return "contains '\(wildcard)', a wildcard in the broker's bindings"
        }
        if name.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.properties.generalCategory == .control }) {
            return "contains a blank or a control character"
        }
        return nil
    }

    /// Validates and returns the definition; `stored` for a definition read back from a store,
    /// which is not held to the rules added after stores began keeping definitions (names that
    /// are routing keys, positive timeouts and delays), so that sagas an earlier release started
    /// finish.
    package func build(stored: Bool) throws -> SagaDefinition {
        func fail(_ message: String, _ suggestion: String? = nil) -> SagaError {
            SagaError(.invalidDefinition, "saga '\(name)': \(message)", recoverySuggestion: suggestion)
        }
        if name.trimmingCharacters(in: .whitespaces).isEmpty { throw fail("the saga name is empty") }
        if !stored {
            if let problem = Self.routingProblem(name, dotAllowed: false) {
                throw fail("the saga name \(problem)", "use letters, digits, '-' and '_' (for example '\(Self.suggestedName(name))')")
            }
            if let deadline, deadline <= .zero {
                throw fail("the deadline \(deadline) is not positive", "give the saga a positive deadline, or none")
            }
            for (label, policy) in [("compensation retry", compensationRetry)]
                + steps.enumerated().map({
                    ("step \($0.offset + 1) '\($0.element.name)': retry", $0.element.options.retry)
                })
            {
                if let problem = Self.retryProblem(policy) { throw fail("\(label) \(problem)") }
            }
        }
        if version < 1 { throw fail("version \(version) is not positive", "versions start at 1") }
        if steps.isEmpty { throw fail("it has no steps", "add at least one step with .step(_:action:)") }
        var stepNames: Set<String> = []
        var commands: [String: String] = [:]
        var pivotSeen: String?
        if let empty = emptyGroups.first {
            throw fail("parallel group '\(empty)' has no steps", "add at least two steps to the group with group.step(_:action:)")
        }
        try validateGroups(fail)
        for (index, step) in steps.enumerated() {
            let position = "step \(index + 1) '\(step.name)'"
            if step.name.isEmpty { throw fail("step \(index + 1) has an empty name") }
            if !stepNames.insert(step.name).inserted { throw fail("\(position): the step name is used twice") }
            let own = [step.action] + (step.fallback.map { [$0.action] } ?? []) + (step.compensation.map { [$0] } ?? [])
            for command in step.wait != nil ? [] : own {
                if command.isEmpty { throw fail("\(position): a command name is empty") }
                if !stored, let problem = Self.routingProblem(command, dotAllowed: true) {
                    throw fail(
                        "\(position): command '\(command)' \(problem)",
                        "command names are routing keys: use letters, digits, '.', '-' and '_'")
                }
                if let other = commands[command] {
                    throw fail(
                        "\(position): command '\(command)' is already used by step '\(other)'",
                        "every action and compensation needs its own command name")
                }
                commands[command] = step.name
            }
            if step.options.retry.maxAttempts < 1 { throw fail("\(position): retry maxAttempts must be at least 1") }
            if !stored, let timeout = step.options.timeout, timeout <= .zero {
                throw fail("\(position): the timeout \(timeout) is not positive", "give the step a positive timeout, or none")
            }
            if let pivot = pivotSeen {
                if step.options.isPivot {
                    throw fail("\(position) is a second pivot (the pivot is '\(pivot)')", "a saga has at most one pivot")
                }
                if step.compensation != nil {
                    throw fail(
                        "\(position) declares compensation '\(step.compensation!)' after the pivot '\(pivot)'",
                        "steps after the pivot are retried forward and never compensated: remove the compensation")
                }
            }
            if step.options.isPivot {
                if let compensation = step.compensation {
                    throw fail(
                        "\(position) is the pivot but declares compensation '\(compensation)'",
                        "the pivot is retried forward and never compensated: remove the compensation")
                }
                pivotSeen = step.name
            }
            if let fallback = step.fallback {
                if step.options.isPivot || pivotSeen != nil || step.group != nil || step.wait != nil {
                    throw fail(
                        "\(position) has fallback '\(fallback.action)' but is the pivot, after it, in a parallel group or a wait",
                        "a fallback replaces a failing action before the pivot: move it to a step before the pivot")
                }
                if let breaker = fallback.breaker, breaker.failureThreshold < 1 || breaker.openFor <= .zero {
                    throw fail(
                        "\(position): the circuit breaker needs a failure threshold of at least 1 and a positive open interval (got \(breaker.failureThreshold), \(breaker.openFor))"
                    )
                }
            }
            if let wait = step.wait {
                if wait.signal.isEmpty { throw fail("\(position) waits for a signal with an empty name") }
                if wait.timeout <= .zero {
                    throw fail("\(position): the wait's timeout \(wait.timeout) is not positive", "wait at most a positive duration")
                }
                if step.options.isPivot || step.compensation != nil || step.group != nil {
                    throw fail(
                        "\(position) is a wait step and cannot be the pivot, have a compensation or be in a parallel group",
                        "a wait only receives a signal: put the work before or after it")
                }
                if let pivot = pivotSeen, wait.onTimeout == .compensate {
                    throw fail(
                        "\(position) waits after the pivot '\(pivot)' and compensates on timeout",
                        "after the pivot nothing is compensated: use onTimeout: .continue")
                }
                if let other = steps[..<index].first(where: { $0.wait?.signal == wait.signal }) {
                    throw fail(
                        "\(position) waits for signal '\(wait.signal)', as step '\(other.name)' does", "give each wait its own signal")
                }
            }
            if let condition = step.condition {
                if step.options.isPivot {
                    throw fail(
                        "\(position) is the pivot but has a condition (\(condition))",
                        "the pivot is the point of no return and runs for every saga that reaches it: put the condition on the steps before or after it"
                    )
                }
                if let problem = condition.problems.first {
                    throw fail("\(position): condition '\(condition)': \(problem)")
                }
            }
        }
        if compensationRetry.maxAttempts < 1 { throw fail("compensation retry maxAttempts must be at least 1") }
        return SagaDefinition(name: name, version: version, steps: steps, deadline: deadline, compensationRetry: compensationRetry)
    }
}

extension SagaBuilder {
    /// What is wrong with a retry policy's delays, if anything.
    fileprivate static func retryProblem(_ policy: RetryPolicy) -> String? {
        if policy.initialDelay < .zero || policy.maxDelay < .zero {
            return "has a negative delay (initialDelay \(policy.initialDelay), maxDelay \(policy.maxDelay))"
        }
        if !(policy.multiplier > 0) || !policy.multiplier.isFinite {
            return "multiplier \(policy.multiplier) is not a positive number"
        }
        return nil
    }

    /// The name with the characters a saga name cannot hold replaced by '-'.
    fileprivate static func suggestedName(_ name: String) -> String {
        String(name.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" ? $0 : "-" })
    }

    /// Checks the parallel groups: each is one run of adjacent steps, has at least two steps,
    /// contains no pivot, and its name is not a step's name.
    private func validateGroups(_ fail: (String, String?) -> SagaError) throws {
        var seen: Set<String> = []
        var index = 0
        let names = Set(steps.map(\.name))
        while index < steps.count {
            guard let group = steps[index].group else {
                index += 1
                continue
            }
            var end = index
            while end + 1 < steps.count, steps[end + 1].group == group { end += 1 }
            if group.trimmingCharacters(in: .whitespaces).isEmpty {
                throw fail("step \(index + 1) '\(steps[index].name)' is in a parallel group with an empty name", nil)
            }
            if !seen.insert(group).inserted {
                throw fail(
                    "parallel group '\(group)' is split: its steps must be adjacent (step \(index + 1) '\(steps[index].name)' starts a second run)",
                    "declare every step of the group inside one .parallel(_:) call")
            }
            if names.contains(group) {
                throw fail("parallel group '\(group)' has the name of a step", "give the group and the step different names")
            }
            if end == index {
                throw fail(
                    "parallel group '\(group)' has one step ('\(steps[index].name)')",
                    "a group runs at least two steps at once: add another, or make it a plain .step(_:action:)")
            }
            if let pivot = steps[index...end].first(where: \.options.isPivot) {
                throw fail(
                    "step '\(pivot.name)' in parallel group '\(group)' is the pivot",
                    "the pivot is the point of no return and runs on its own: put it before or after the group")
            }
            index = end + 1
        }
    }
}

/// The steps of a parallel group, added with ``SagaBuilder/parallel(_:_:)``.
public struct SagaParallelGroup: Sendable {
    /// The group's name.
    public let name: String
    var steps: [SagaStep] = []

    init(name: String) { self.name = name }

    /// Adds a member step. The parameters are those of ``SagaBuilder/step(_:action:compensation:options:when:)``;
    /// a member cannot be the pivot.
    public func step(
        _ name: String, action: String, compensation: String? = nil, options: StepOptions = .default,
        when condition: SagaCondition? = nil
    ) -> SagaParallelGroup {
        var copy = self
        copy.steps.append(
            SagaStep(
                name: name, action: action, compensation: compensation, options: options, condition: condition, group: self.name))
        return copy
    }
}

extension SagaDefinition {
    /// Step `index` (counted from 0, as the model and the command messages count) in the words
    /// people read: counted from 1, as `saga show` and the console say it, with the step's name
    /// when the definition has the step (`step 3 'ship'`). Every message that names a step
    /// says it this way.
    package func describeStep(_ index: Int) -> String {
        steps.indices.contains(index) ? "step \(index + 1) '\(steps[index].name)'" : "step \(index + 1)"
    }
}

/// The saga definitions a process knows, by name and version.
///
/// Several versions of one name may be registered (a process that still runs sagas of an older
/// version): ``definition(named:)`` returns the latest, the one new sagas start on.
public struct SagaDefinitionRegistry: Sendable {
    private var byName: [String: [Int: SagaDefinition]] = [:]

    /// Creates a registry with these definitions.
    /// - Throws: `invalidDefinition` when two definitions share a name and a version.
    public init(_ definitions: [SagaDefinition] = []) throws {
        for definition in definitions { try register(definition) }
    }

    /// Registers a definition.
    /// - Throws: `invalidDefinition` when a definition with the same name and version is
    ///   registered.
    public mutating func register(_ definition: SagaDefinition) throws {
        if byName[definition.name]?[definition.version] != nil {
            let version = definition.version == 1 ? "" : " version \(definition.version)"
            throw SagaError(.invalidDefinition, "a saga definition named '\(definition.name)'\(version) is already registered")
        }
        byName[definition.name, default: [:]][definition.version] = definition
    }

    /// The latest version of the definition with that name.
    /// - Throws: `unknownDefinition`.
    public func definition(named name: String) throws -> SagaDefinition {
        guard let versions = byName[name], let latest = versions.keys.max(), let definition = versions[latest] else {
            throw SagaError(
                .unknownDefinition,
                "no saga definition named '\(name)' (known: \(byName.keys.sorted().joined(separator: ", ")))",
                recoverySuggestion: "register the definition in every process that handles this saga"
            )
        }
        return definition
    }

    /// The definition with that name and version, if registered here.
    public func definition(named name: String, version: Int) -> SagaDefinition? {
        byName[name]?[version]
    }

    /// All definitions, sorted by name then version.
    public var all: [SagaDefinition] {
        byName.values.flatMap(\.values).sorted { ($0.name, $0.version) < ($1.name, $1.version) }
    }
}
