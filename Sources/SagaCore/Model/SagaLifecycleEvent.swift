public import Foundation

/// Something that happened to a saga, published for any service to react to: started, a step
/// completed or failed, compensation started, completed, compensated, needs attention, an
/// operator's action.
///
/// Participants and managers record the events of a transition in the store's outbox in the same
/// transaction as the transition, and publish them to the topology's events exchange
/// (`<prefix>.events`, a topic exchange) with the routing key ``routingKey``
/// (`<definition>.<kind>`, for example `order.completed`). Bind a queue with `order.#` for every
/// event of one definition, or `*.needs-attention` for one kind of every definition.
///
/// The wire format (JSON body, headers) is documented in `Docs/WireFormat.md`, with a JSON
/// Schema in `Docs/schemas/saga-event.schema.json`.
public struct SagaLifecycleEvent: Sendable, Hashable, Codable {
    /// What happened.
    public enum Kind: String, Sendable, Hashable, Codable, CaseIterable {
        /// The saga was stored with its first command.
        case started
        /// A step's action succeeded.
        case stepCompleted = "step-completed"
        /// A step's action failed (``SagaLifecycleEvent/willRetry`` says whether it runs again).
        case stepFailed = "step-failed"
        /// A step was skipped because its condition did not hold (``SagaLifecycleEvent/reason``
        /// says which condition). Several may follow one transition, one per skipped step.
        case stepSkipped = "step-skipped"
        /// The saga began to undo its completed steps (``SagaLifecycleEvent/error`` says why).
        case compensationStarted = "compensation-started"
        /// A step's compensation succeeded.
        case compensationStepCompleted = "compensation-step-completed"
        /// A step's compensation failed (``SagaLifecycleEvent/willRetry`` says whether it runs
        /// again).
        case compensationStepFailed = "compensation-step-failed"
        /// Every step completed.
        case completed
        /// Every completed step was compensated.
        case compensated
        /// The saga stopped and waits for an operator (``SagaLifecycleEvent/error`` says why).
        case needsAttention = "needs-attention"
        /// An operator asked for a retry or a compensation (``SagaLifecycleEvent/actor``,
        /// ``SagaLifecycleEvent/reason``, ``SagaLifecycleEvent/action``).
        case operatorAction = "operator-action"
        /// The saga reached a wait step and waits for its signal (``SagaLifecycleEvent/reason``
        /// names the signal and until when).
        case waiting

        /// Whether the saga is over after this event (it may still be retried by an operator
        /// after needs-attention).
        public var isTerminal: Bool { self == .completed || self == .compensated || self == .needsAttention }
    }

    /// A unique id: `<saga id>:<saga version>:<kind>` (`<saga id>:<saga version>:step-skipped:<step>`
    /// for a skipped step, since one transition may skip several); the same event published
    /// twice (by the outbox relay after a crash) has the same id, so consumers can drop
    /// duplicates.
    public var id: String
    /// What happened.
    public var kind: Kind
    /// The saga id.
    public var sagaID: SagaID
    /// The saga definition's name.
    public var sagaName: String
    /// The definition version the saga is pinned to.
    public var definitionVersion: Int
    /// The saga's status after the transition.
    public var status: SagaStatus
    /// The saga's version after the transition (events of one saga are ordered by it).
    public var sagaVersion: Int64
    /// The step concerned, when one is.
    public var step: Int?
    /// The step's name, when a step is concerned.
    public var stepName: String?
    /// Action or compensation, when a step is concerned.
    public var phase: StepPhase?
    /// The attempt concerned, when a step is concerned.
    public var attempt: Int?
    /// For failures: the error; for compensation-started and needs-attention: the reason.
    public var error: String?
    /// For step failures: whether the step is attempted again.
    public var willRetry: Bool?
    /// For operator actions: `retry` or `compensate`.
    public var action: String?
    /// For operator actions: who asked.
    public var actor: String?
    /// For operator actions: why, when they said; for a skipped step: the condition that did not
    /// hold (`condition not met: amount > 1000`).
    public var reason: String?
    /// When the transition was decided (whole milliseconds, as on the wire).
    public var at: Date

    /// Creates an event.
    public init(
        kind: Kind, sagaID: SagaID, sagaName: String, definitionVersion: Int, status: SagaStatus, sagaVersion: Int64, step: Int? = nil,
        stepName: String? = nil, phase: StepPhase? = nil, attempt: Int? = nil, error: String? = nil, willRetry: Bool? = nil,
        action: String? = nil, actor: String? = nil, reason: String? = nil, at: Date
    ) {
        self.id = "\(sagaID):\(sagaVersion):\(kind.rawValue)" + (kind == .stepSkipped ? step.map { ":\($0)" } ?? "" : "")
        self.kind = kind
        self.sagaID = sagaID
        self.sagaName = sagaName
        self.definitionVersion = definitionVersion
        self.status = status
        self.sagaVersion = sagaVersion
        self.step = step
        self.stepName = stepName
        self.phase = phase
        self.attempt = attempt
        self.error = error
        self.willRetry = willRetry
        self.action = action
        self.actor = actor
        self.reason = reason
        self.at = Self.wholeMilliseconds(at)
    }

    /// The routing key on the events exchange: `<definition>.<kind>`.
    public var routingKey: String { "\(sagaName).\(kind.rawValue)" }

    // `at` is written as ISO 8601 with milliseconds (JSONCoding's dates have whole seconds).
    private enum CodingKeys: String, CodingKey {
        case id, kind, sagaID, sagaName, definitionVersion, status, sagaVersion, step, stepName, phase, attempt, error, willRetry
        case action, actor, reason, at
    }

    /// Decodes an event; `at` is an ISO 8601 time, with or without fractional seconds.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        kind = try container.decode(Kind.self, forKey: .kind)
        sagaID = try container.decode(SagaID.self, forKey: .sagaID)
        sagaName = try container.decode(String.self, forKey: .sagaName)
        definitionVersion = try container.decode(Int.self, forKey: .definitionVersion)
        status = try container.decode(SagaStatus.self, forKey: .status)
        sagaVersion = try container.decode(Int64.self, forKey: .sagaVersion)
        step = try container.decodeIfPresent(Int.self, forKey: .step)
        stepName = try container.decodeIfPresent(String.self, forKey: .stepName)
        phase = try container.decodeIfPresent(StepPhase.self, forKey: .phase)
        attempt = try container.decodeIfPresent(Int.self, forKey: .attempt)
        error = try container.decodeIfPresent(String.self, forKey: .error)
        willRetry = try container.decodeIfPresent(Bool.self, forKey: .willRetry)
        action = try container.decodeIfPresent(String.self, forKey: .action)
        actor = try container.decodeIfPresent(String.self, forKey: .actor)
        reason = try container.decodeIfPresent(String.self, forKey: .reason)
        let text = try container.decode(String.self, forKey: .at)
        guard let at = Self.fastParse(text) ?? Self.parseTime(text) else {
            throw DecodingError.dataCorruptedError(forKey: .at, in: container, debugDescription: "'\(text)' is not an ISO 8601 time")
        }
        self.at = Self.wholeMilliseconds(at)
    }

    /// Encodes the event (absent optional fields are left out).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(kind, forKey: .kind)
        try container.encode(sagaID, forKey: .sagaID)
        try container.encode(sagaName, forKey: .sagaName)
        try container.encode(definitionVersion, forKey: .definitionVersion)
        try container.encode(status, forKey: .status)
        try container.encode(sagaVersion, forKey: .sagaVersion)
        try container.encodeIfPresent(step, forKey: .step)
        try container.encodeIfPresent(stepName, forKey: .stepName)
        try container.encodeIfPresent(phase, forKey: .phase)
        try container.encodeIfPresent(attempt, forKey: .attempt)
        try container.encodeIfPresent(error, forKey: .error)
        try container.encodeIfPresent(willRetry, forKey: .willRetry)
        try container.encodeIfPresent(action, forKey: .action)
        try container.encodeIfPresent(actor, forKey: .actor)
        try container.encodeIfPresent(reason, forKey: .reason)
        try container.encode(Self.fastFormat(at), forKey: .at)
    }

    private static func wholeMilliseconds(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 * 1000).rounded() / 1000)
    }

    /// `2026-11-29T10:41:07.316Z`: whole seconds formatted, the milliseconds appended exactly
    /// (formatting a binary fraction directly can print .122 for .123).
    package static func format(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let seconds = milliseconds.quotientAndRemainder(dividingBy: 1000)
        let (whole, fraction) = seconds.remainder < 0 ? (seconds.quotient - 1, seconds.remainder + 1000) : seconds
        let text = Date(timeIntervalSince1970: Double(whole)).formatted(Date.ISO8601FormatStyle())
        let digits = String(fraction)
        return text.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    private static func parseTime(_ text: String) -> Date? {
        (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text))
            ?? (try? Date.ISO8601FormatStyle().parse(text))
    }
}

// MARK: - Deriving events from a transition

extension SagaLifecycleEvent {
    /// Which events a deployment publishes.
    public enum Selection: String, Sendable, Hashable, CaseIterable {
        /// Every event.
        case all
        /// Only started, the outcomes (completed, compensated, needs attention),
        /// compensation-started and operator actions: enough to await and watch sagas, about a
        /// third of the messages of `all` for a three-step saga.
        case outcomes
        /// Only the events that end a saga's run: completed, compensated and needs attention,
        /// exactly what a waiting `SagaManager` listens for (`outcome(of:)`, `startAndWait`); one
        /// message per saga, for a deployment where nobody watches running sagas.
        case terminal
        /// None: nothing is published; `SagaManager` waits for outcomes by reading the store.
        case none

        /// Whether this selection publishes events of `kind`.
        public func includes(_ kind: Kind) -> Bool {
            switch self {
            case .all: true
            case .none: false
            case .terminal:
                switch kind {
                case .completed, .compensated, .needsAttention: true
                case .started, .compensationStarted, .operatorAction, .waiting, .stepCompleted, .stepFailed, .stepSkipped,
                    .compensationStepCompleted, .compensationStepFailed:
                    false
                }
            case .outcomes:
                switch kind {
                case .started, .completed, .compensated, .needsAttention, .compensationStarted, .operatorAction, .waiting: true
                case .stepCompleted, .stepFailed, .stepSkipped, .compensationStepCompleted, .compensationStepFailed: false
                }
            }
        }
    }

    /// The event of a saga's start (`state` as stored, version 1).
    public static func started(_ state: SagaState, at now: Date) -> SagaLifecycleEvent {
        SagaLifecycleEvent(
            kind: .started, sagaID: state.id, sagaName: state.name, definitionVersion: state.definitionVersion, status: state.status,
            sagaVersion: 1, step: state.currentStep, attempt: state.attempt, at: now)
    }

    /// The terminal event of a saga that has ended (`nil` while it has not), as the transition
    /// that ended it published it: its kind from the status, the failure reason as `error`
    /// (compensated, needs attention), the step it stopped at (needs attention), dated at its
    /// last update. For a caller that found the end in the store rather than by the event.
    public static func ending(of state: SagaState) -> SagaLifecycleEvent? {
        let kind: Kind
        var step: Int?
        var phase: StepPhase?
        var error: String?
        switch state.status {
        case .completed: kind = .completed
        case .compensated:
            kind = .compensated
            error = state.failureReason
        case .needsAttention:
            kind = .needsAttention
            (step, phase, error) = (state.currentStep, state.phase, state.failureReason)
        case .running, .compensating, .waiting: return nil
        }
        return SagaLifecycleEvent(
            kind: kind, sagaID: state.id, sagaName: state.name, definitionVersion: state.definitionVersion, status: state.status,
            sagaVersion: state.version, step: step,
            stepName: step.flatMap { step in state.history.last(where: { $0.step == step })?.stepName }, phase: phase,
            error: error, at: state.updatedAt)
    }

    /// The events of a saga's start (`state` as stored, version 1): started, then a
    /// step-skipped for every step skipped at the start (their conditions did not hold), then
    /// completed when every step was skipped.
    /// `definition` (the saga's) lets a `waiting` event name the signal and until when.
    public static func startEvents(_ state: SagaState, definition: SagaDefinition? = nil, at now: Date) -> [SagaLifecycleEvent] {
        var events = [started(state, at: now)]
        events += skipped(in: state, after: -1, version: 1, at: now)
        if state.status == .waiting { events.append(waiting(state, definition: definition, version: 1, at: now)) }
        if state.status == .completed {
            events.append(
                SagaLifecycleEvent(
                    kind: .completed, sagaID: state.id, sagaName: state.name, definitionVersion: state.definitionVersion,
                    status: state.status, sagaVersion: 1, at: now))
        }
        return events
    }

    /// The event of a saga that reached a wait step (its status is waiting).
    private static func waiting(_ state: SagaState, definition: SagaDefinition?, version: Int64, at now: Date) -> SagaLifecycleEvent {
        let step = definition.flatMap { $0.steps.indices.contains(state.currentStep) ? $0.steps[state.currentStep] : nil }
        let reason = step?.wait.map { wait in
            "waits for signal '\(wait.signal)' until \(state.updatedAt.addingTimeInterval(wait.timeout.seconds).formatted(.iso8601))"
        }
        return SagaLifecycleEvent(
            kind: .waiting, sagaID: state.id, sagaName: state.name, definitionVersion: state.definitionVersion, status: state.status,
            sagaVersion: version, step: state.currentStep, stepName: step?.name, phase: .action, reason: reason ?? "waits for a signal",
            at: now)
    }

    /// The step-skipped events of the steps skipped in `new` but not in `old`.
    private static func skipped(in new: SagaState, notIn old: SagaState, version: Int64, at now: Date) -> [SagaLifecycleEvent] {
        skipped(in: new, after: -1, version: version, at: now).filter { !old.wasSkipped($0.step ?? -1) }
    }

    /// The step-skipped events of the skipped steps after step `index` in `state`'s history.
    private static func skipped(in state: SagaState, after index: Int, version: Int64, at now: Date) -> [SagaLifecycleEvent] {
        state.history.filter { $0.outcome == .skipped && $0.step > index }.map { record in
            SagaLifecycleEvent(
                kind: .stepSkipped, sagaID: state.id, sagaName: state.name, definitionVersion: state.definitionVersion,
                status: state.status, sagaVersion: version, step: record.step, stepName: record.stepName, phase: .action,
                reason: record.reason, at: now)
        }
    }

    /// The events of one transition: `event` moved the saga from `old` to `new`, stored as
    /// version `version`. Pure: the same inputs give the same events, in the order they
    /// happened (the step's outcome first, then the change of status).
    /// `definition` (the saga's) lets a `waiting` event name the signal and until when.
    public static func events(
        of event: SagaEvent, from old: SagaState, to new: SagaState, version: Int64, definition: SagaDefinition? = nil, at now: Date
    ) -> [SagaLifecycleEvent] {
        func make(
            _ kind: Kind, step: Int? = nil, phase: StepPhase? = nil, attempt: Int? = nil, error: String? = nil, willRetry: Bool? = nil,
            action: String? = nil, actor: String? = nil, reason: String? = nil
        ) -> SagaLifecycleEvent {
            SagaLifecycleEvent(
                kind: kind, sagaID: new.id, sagaName: new.name, definitionVersion: new.definitionVersion, status: new.status,
                sagaVersion: version, step: step, stepName: step.flatMap { stepName(of: $0, in: old, new) }, phase: phase,
                attempt: attempt, error: error, willRetry: willRetry, action: action, actor: actor, reason: reason, at: now)
        }
        // A failed attempt runs again when the transition recorded it as `retrying` (the step's
        // latest record; in a parallel group the saga's current step is the group's first).
        func retried(_ step: Int, _ phase: StepPhase) -> Bool {
            guard !new.status.isTerminal else { return false }
            if new.history.last(where: { $0.step == step && $0.phase == phase })?.outcome == .retrying { return true }
            // A primary action that failed for good and is replaced by its fallback.
            return new.status == old.status && new.currentStep == step && new.phase == phase && new.attempt > old.attempt
        }
        var events: [SagaLifecycleEvent] = []
        switch event {
        case .stepCompleted(let step, let attempt, _, _):
            events.append(make(.stepCompleted, step: step, phase: .action, attempt: attempt))
            // The steps after it whose conditions did not hold (skipped by this transition).
            events += skipped(in: new, notIn: old, version: version, at: now)
        case .stepFailed(let step, let attempt, let error, _, _):
            events.append(
                make(.stepFailed, step: step, phase: .action, attempt: attempt, error: error, willRetry: retried(step, .action)))
        case .stepTimedOut(let step, let attempt, let after, _):
            events.append(
                make(
                    .stepFailed, step: step, phase: .action, attempt: attempt, error: "timed out after \(after)",
                    willRetry: retried(step, .action)))
        case .compensationCompleted(let step, let attempt, _):
            events.append(make(.compensationStepCompleted, step: step, phase: .compensation, attempt: attempt))
        case .compensationFailed(let step, let attempt, let error, _):
            events.append(
                make(
                    .compensationStepFailed, step: step, phase: .compensation, attempt: attempt, error: error,
                    willRetry: retried(step, .compensation)))
        case .retryRequested(let actor, let requested, let change):
            let reason = SagaStateMachine.reason(requested, moving: old.deadline, change)
            events.append(
                make(
                    .operatorAction, step: old.currentStep, phase: old.phase, attempt: old.attempt, action: "retry", actor: actor,
                    reason: reason))
        case .compensationRequested(let actor, let reason):
            events.append(
                make(
                    .operatorAction, step: old.currentStep, phase: old.phase, attempt: old.attempt, action: "compensate", actor: actor,
                    reason: reason))
        case .stopRequested(let actor, let reason):
            events.append(
                make(
                    .operatorAction, step: old.currentStep, phase: old.phase, attempt: old.attempt, action: "stop", actor: actor,
                    reason: reason))
        case .resolvedByOperator(let actor, let reason, _):
            let phase = definition.map { SagaStateMachine(definition: $0).phase(of: old) } ?? old.phase
            events.append(
                make(
                    .operatorAction, step: old.currentStep, phase: phase, attempt: old.attempt, action: "resolve", actor: actor,
                    reason: reason))
        case .signalReceived:
            // The wait completed (now, or ahead of the saga for an early signal).
            if let record = new.history.last, record.outcome == .completed, old.history.last != record {
                events.append(
                    make(.stepCompleted, step: record.step, phase: .action, attempt: 1, actor: record.actor, reason: record.reason))
            }
            events += skipped(in: new, notIn: old, version: version, at: now)
        case .waitExpired:
            if let record = new.history.last(where: { $0.step == old.currentStep }), record.outcome == .failed {
                events.append(make(.stepFailed, step: record.step, phase: .action, attempt: 1, error: record.error, willRetry: false))
            }
            events += skipped(in: new, notIn: old, version: version, at: now)
        case .deadlinePassed, .foundStalled:
            break
        }
        if new.status != old.status {
            switch new.status {
            case .compensating:
                // From needs-attention it resumes a compensation: the operator-action event says so.
                if old.status == .running {
                    events.append(make(.compensationStarted, step: new.currentStep, phase: .compensation, error: new.failureReason))
                }
            case .completed:
                events.append(make(.completed))
            case .compensated:
                // A saga with nothing to undo goes from running to compensated at once.
                if old.status == .running {
                    events.append(make(.compensationStarted, error: new.failureReason))
                }
                events.append(make(.compensated, error: new.failureReason))
            case .needsAttention:
                events.append(make(.needsAttention, step: new.currentStep, phase: new.phase, error: new.failureReason))
            case .running:
                break  // resumed by an operator (the operator-action event says so) or by a signal
            case .waiting:
                events.append(waiting(new, definition: definition, version: version, at: now))
            }
        }
        return events
    }

    private static func stepName(of step: Int, in old: SagaState, _ new: SagaState) -> String? {
        new.history.last(where: { $0.step == step })?.stepName ?? old.history.last(where: { $0.step == step })?.stepName
    }
}

// MARK: - The wire form without Codable

extension SagaLifecycleEvent {
    /// The event as a message body: the JSON text of its `Codable` form (keys sorted), written
    /// without `JSONEncoder`.
    package var jsonBytes: [UInt8] {
        var writer = JSONWriter(capacity: 320)
        writer.beginObject()
        if let action {
            writer.key("action")
            writer.write(action)
        }
        if let actor {
            writer.key("actor")
            writer.write(actor)
        }
        writer.key("at")
        writer.write(Self.fastFormat(at))
        if let attempt {
            writer.key("attempt")
            writer.write(attempt)
        }
        writer.key("definitionVersion")
        writer.write(definitionVersion)
        if let error {
            writer.key("error")
            writer.write(error)
        }
        writer.key("id")
        writer.write(id)
        writer.key("kind")
        writer.write(kind.rawValue)
        if let phase {
            writer.key("phase")
            writer.write(phase.rawValue)
        }
        if let reason {
            writer.key("reason")
            writer.write(reason)
        }
        writer.key("sagaID")
        writer.write(sagaID)
        writer.key("sagaName")
        writer.write(sagaName)
        writer.key("sagaVersion")
        writer.write(sagaVersion)
        writer.key("status")
        writer.write(status.rawValue)
        if let step {
            writer.key("step")
            writer.write(step)
        }
        if let stepName {
            writer.key("stepName")
            writer.write(stepName)
        }
        if let willRetry {
            writer.key("willRetry")
            writer.write(willRetry)
        }
        writer.endObject()
        return writer.bytes
    }

    /// Reads an event from a message body, as its `Codable` form reads it (other keys ignored).
    /// - Throws: ``JSONSyntaxError`` or ``JSONFieldError``.
    package init(jsonBytes: some Collection<UInt8>) throws {
        let fields = try JSONFields(JSONValue(parsing: jsonBytes))
        let id = try fields.string("id")
        let kind = try fields.value("kind", as: Kind.self)
        let sagaID = try fields.string("sagaID")
        let sagaName = try fields.string("sagaName")
        let definitionVersion = try fields.int("definitionVersion")
        let status = try fields.value("status", as: SagaStatus.self)
        let sagaVersion = try fields.int64("sagaVersion")
        let step = try fields.optionalInt("step")
        let phase = try fields.optionalValue("phase", as: StepPhase.self)
        let attempt = try fields.optionalInt("attempt")
        let text = try fields.string("at")
        guard let at = Self.fastParse(text) ?? Self.parseTime(text) else {
            throw JSONFieldError.wrongType("at", expected: "an ISO 8601 time")
        }
        self.init(
            kind: kind, sagaID: sagaID, sagaName: sagaName, definitionVersion: definitionVersion, status: status,
            sagaVersion: sagaVersion, step: step, stepName: try fields.optionalString("stepName"), phase: phase, attempt: attempt,
            error: try fields.optionalString("error"), willRetry: try fields.optionalBool("willRetry"),
            action: try fields.optionalString("action"), actor: try fields.optionalString("actor"),
            reason: try fields.optionalString("reason"), at: at)
        self.id = id
    }

    /// `format(_:)` without `Date.ISO8601FormatStyle` (the same text): the civil date of the
    /// day count, after Howard Hinnant's `civil_from_days`.
    package static func fastFormat(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let (days, dayMilliseconds) = Self.floorDivision(milliseconds, 86_400_000)
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        guard (0...9999).contains(year) else { return format(date) }
        let (hours, rest) = dayMilliseconds.quotientAndRemainder(dividingBy: 3_600_000)
        let (minutes, rest2) = rest.quotientAndRemainder(dividingBy: 60_000)
        let (seconds, millis) = rest2.quotientAndRemainder(dividingBy: 1000)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        func digits(_ value: Int64, _ count: Int) {
            var divisor: Int64 = 1
            for _ in 1..<count { divisor *= 10 }
            var value = value
            while divisor > 0 {
                bytes.append(UInt8(ascii: "0") + UInt8(value / divisor))
                value %= divisor
                divisor /= 10
            }
        }
        digits(year, 4)
        bytes.append(UInt8(ascii: "-"))
        digits(month, 2)
        bytes.append(UInt8(ascii: "-"))
        digits(day, 2)
        bytes.append(UInt8(ascii: "T"))
        digits(hours, 2)
        bytes.append(UInt8(ascii: ":"))
        digits(minutes, 2)
        bytes.append(UInt8(ascii: ":"))
        digits(seconds, 2)
        bytes.append(UInt8(ascii: "."))
        digits(millis, 3)
        bytes.append(UInt8(ascii: "Z"))
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (what ``fastFormat(_:)`` writes); `nil` for any
    /// other form, which ``parseTime(_:)`` then reads.
    package static func fastParse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count == 24, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
            bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"), bytes[19] == UInt8(ascii: "."),
            bytes[23] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var value: Int64 = 0
            for index in range {
                let byte = bytes[index]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hours = number(11..<13),
            let minutes = number(14..<16), let seconds = number(17..<19), let millis = number(20..<23),
            (1...12).contains(month), (1...31).contains(day), hours < 24, minutes < 60, seconds < 60
        else { return nil }
        // days_from_civil
        let shiftedYear = month <= 2 ? year - 1 : year
        let era = (shiftedYear >= 0 ? shiftedYear : shiftedYear - 399) / 400
        let yearOfEra = shiftedYear - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        let total = ((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000 + millis
        return Date(timeIntervalSince1970: Double(total) / 1000)
    }

    private static func floorDivision(_ value: Int64, _ divisor: Int64) -> (Int64, Int64) {
        let (quotient, remainder) = value.quotientAndRemainder(dividingBy: divisor)
        return remainder < 0 ? (quotient - 1, remainder + divisor) : (quotient, remainder)
    }
}
