import Foundation
import Synchronization

/// What a handler receives: which saga and step it serves, the payload, an idempotency key, a
/// logger, and the calls that report the outcome.
///
/// An action handler calls ``completeStep(merging:)-(JSONObject)`` or
/// ``failAndCompensate(reason:)``; a compensation handler calls ``completeCompensation()``.
/// Returning without calling any counts as success with no payload change. Throwing counts as a
/// retryable failure handled by the step's retry policy (compensations are retried until they
/// succeed or their policy gives up, and then the saga needs attention).
///
/// When the service's tables live in the saga store's database, each of these calls also takes
/// the handler's writes to them (`writing:`, see ``LocalWrite``): they commit in the one
/// transaction that records the outcome and the next command, exactly once.
public struct SagaContext: Sendable {
    /// The saga id.
    public let sagaID: SagaID
    /// The saga definition's name.
    public let sagaName: String
    /// The step name.
    public let stepName: String
    /// The step index (0-based).
    public let step: Int
    /// Action or compensation.
    public let phase: StepPhase
    /// The attempt number (1-based); greater than 1 on retries.
    public let attempt: Int
    /// The command being handled.
    public let command: String
    /// The saga payload as JSON.
    public let payload: JSONObject
    /// What SagaKit and the starter keep with the saga besides its payload: trace and
    /// correlation ids, the definition version (``definitionVersion``), the topology.
    public let sagaContext: [String: String]

    /// The version of the saga's definition, which decides the shape of its payload: a handler
    /// that serves sagas of several versions during a rolling upgrade can decode by it
    /// (`Docs/Upgrades.md`). 1 for sagas started before versions existed.
    public var definitionVersion: Int { sagaContext[SagaState.definitionVersionKey].flatMap { Int($0) } ?? 1 }
    /// The same for every delivery and attempt of this step and phase of this saga, and
    /// different for a later saga that reuses the id of a purged one
    /// (`"<saga id>:<step name>:<phase>:<incarnation>"`, see
    /// ``SagaCommand/idempotencyKey(incarnation:)``). Use it to apply the handler's effect once
    /// (for example as a unique key in the service's own table).
    public let idempotencyKey: String
    /// A logger whose metadata carries the saga id, name, step, phase and attempt.
    public var logger: Logger

    /// After a report threw ``SagaError/Code/outcomeDiscarded``: what to do with this run's
    /// effect, decided from where the saga was when the report was discarded; `nil` before.
    public var discardedOutcome: DiscardedOutcome? { execution.discarded }

    let execution: StepExecution

    init(
        sagaID: SagaID, sagaName: String, stepName: String, step: Int, phase: StepPhase, attempt: Int, command: String,
        payload: JSONObject, sagaContext: [String: String], idempotencyKey: String, logger: Logger, execution: StepExecution
    ) {
        self.sagaID = sagaID
        self.sagaName = sagaName
        self.stepName = stepName
        self.step = step
        self.phase = phase
        self.attempt = attempt
        self.command = command
        self.payload = payload
        self.sagaContext = sagaContext
        self.idempotencyKey = idempotencyKey
        self.logger = logger
        self.execution = execution
    }

    /// Creates a context whose reports go to `report` instead of a saga store: for tests of
    /// handlers and for test doubles. (The `SagaTesting` product builds these for you, positioned
    /// by a real saga definition.)
    ///
    /// The context enforces what the runtime enforces: one report per context, and the report
    /// call must fit the phase. `report` runs once, with the handler's report; when it throws,
    /// the handler's report call throws that error.
    public init(
        sagaID: SagaID, sagaName: String, stepName: String, step: Int, phase: StepPhase, attempt: Int = 1, command: String,
        payload: JSONObject, sagaContext: [String: String] = [:], idempotencyKey: String? = nil,
        logger: Logger = Logger(label: "sagakit.test"),
        report: @escaping @Sendable (SagaHandlerReport) async throws -> Void
    ) {
        self.init(
            sagaID: sagaID, sagaName: sagaName, stepName: stepName, step: step, phase: phase, attempt: attempt, command: command,
            payload: payload, sagaContext: sagaContext, idempotencyKey: idempotencyKey,
            logger: logger,
            reportWithLocalWrites: { result, localWrites in
                guard localWrites.isEmpty else {
                    throw SagaError(
                        .unsupported, "this SagaContext reports to a closure that cannot take local writes",
                        recoverySuggestion: "create it with init(…, reportWithLocalWrites:) to see the handler's local writes")
                }
                try await report(result)
            })
    }

    /// Creates a context whose reports, with the handler's local writes (``LocalWrite``), go to
    /// `report`: for tests of handlers that write with their outcome. Otherwise like
    /// ``init(sagaID:sagaName:stepName:step:phase:attempt:command:payload:sagaContext:idempotencyKey:logger:report:)``.
    public init(
        sagaID: SagaID, sagaName: String, stepName: String, step: Int, phase: StepPhase, attempt: Int = 1, command: String,
        payload: JSONObject, sagaContext: [String: String] = [:], idempotencyKey: String? = nil,
        logger: Logger = Logger(label: "sagakit.test"),
        reportWithLocalWrites report: @escaping @Sendable (SagaHandlerReport, [LocalWrite]) async throws -> Void
    ) {
        self.init(
            sagaID: sagaID, sagaName: sagaName, stepName: stepName, step: step, phase: phase, attempt: attempt, command: command,
            payload: payload, sagaContext: sagaContext,
            idempotencyKey: idempotencyKey
                ?? SagaCommand(
                    sagaID: sagaID, sagaName: sagaName, command: command, step: step, stepName: stepName, phase: phase, attempt: attempt
                ).idempotencyKey(incarnation: sagaContext[SagaState.incarnationKey]),
            logger: logger, execution: StepExecution(report: report))
    }

    /// Whether the handler reported an outcome through this context (returning without one
    /// counts as success).
    public var hasReported: Bool { execution.isFinished }

    /// Decodes the payload into a service's own type (keys the type does not know are ignored).
    /// - Throws: `invalidPayload` saying what is missing or mistyped.
    public func payload<T: Decodable>(as type: T.Type) throws -> T {
        do {
            return try JSONCoding.value(type, from: payload)
        } catch {
            throw SagaError(.invalidPayload, "saga \(sagaID): the payload does not decode as \(T.self): \(error)", underlying: error)
        }
    }

    /// Completes this step's action, shallow-merges `patch` into the payload, and publishes the
    /// next step's command (or marks the saga completed). Returns once the new state is stored and
    /// the broker has confirmed the next command.
    ///
    /// - Throws: ``SagaError/Code/outcomeDiscarded`` when the outcome was not recorded because the
    ///   saga moved on while the handler ran (an operator compensated it, its deadline passed, the
    ///   step timed out): this report did not count; ``discardedOutcome`` says whether to undo this
    ///   run's effect (see WritingParticipants.md). Other errors (store or broker) mean the
    ///   delivery is retried.
    public func completeStep(merging patch: JSONObject = [:]) async throws {
        try requirePhase(.action, "completeStep")
        try await execution.finish(.completed(patch), sagaID: sagaID, command: command)
    }

    /// Completes this step's action, merging the top-level keys of an encodable value.
    public func completeStep<Patch: Encodable>(merging patch: Patch) async throws {
        try await completeStep(merging: try JSONCoding.object(from: patch))
    }

    /// Completes this step's action like ``completeStep(merging:)-(JSONObject)``, and runs
    /// `writes` on the service's own tables in the same database transaction that records the
    /// new state and the next command (the store must run local writes: SQLite or PostgreSQL,
    /// with the service's tables in the same database).
    ///
    /// The step's effect then happens exactly once without an idempotency key: when the saga
    /// moved on meanwhile (a duplicate delivery recorded this step first, an operator acted),
    /// the writes roll back with the lost compare-and-swap and this throws `outcomeDiscarded`;
    /// nothing is left to undo.
    ///
    /// - Throws: ``SagaError/Code/localWriteFailed`` when a write fails (a constraint, its SQL)
    ///   or misses its ``LocalWrite/expectation``: nothing was stored, and the handler may report
    ///   another outcome (for example ``failAndCompensate(reason:writing:)``) or rethrow (the step
    ///   is retried by its retry policy). `unsupported` when the store cannot run local writes
    ///   (the handler may report again too). Otherwise like ``completeStep(merging:)-(JSONObject)``.
    public func completeStep(merging patch: JSONObject = [:], writing writes: [LocalWrite]) async throws {
        try requirePhase(.action, "completeStep")
        try await execution.finish(.completed(patch), localWrites: writes, sagaID: sagaID, command: command)
    }

    /// Completes this step's action, merging the top-level keys of an encodable value, with
    /// local writes (see ``completeStep(merging:writing:)-(JSONObject,_)``).
    public func completeStep<Patch: Encodable>(merging patch: Patch, writing writes: [LocalWrite]) async throws {
        try await completeStep(merging: try JSONCoding.object(from: patch), writing: writes)
    }

    /// Fails this step for a business reason (no retry) and starts compensating the completed
    /// steps in reverse order. After the pivot nothing can be compensated: the saga then needs
    /// attention.
    ///
    /// - Throws: ``SagaError/Code/outcomeDiscarded`` when the saga moved on while the handler ran
    ///   (the refusal was not recorded; the saga is already elsewhere).
    public func failAndCompensate(reason: String) async throws {
        try requirePhase(.action, "failAndCompensate")
        try await execution.finish(.failed(reason, retryable: false), sagaID: sagaID, command: command)
    }

    /// Fails this step like ``failAndCompensate(reason:)``, and runs `writes` on the service's
    /// own tables in the transaction that records the failure (for example the refusal in the
    /// service's own records). Errors as for ``completeStep(merging:writing:)-(JSONObject,_)``.
    public func failAndCompensate(reason: String, writing writes: [LocalWrite]) async throws {
        try requirePhase(.action, "failAndCompensate")
        try await execution.finish(.failed(reason, retryable: false), localWrites: writes, sagaID: sagaID, command: command)
    }

    /// Completes this compensation and publishes the next one (or marks the saga compensated).
    ///
    /// - Throws: ``SagaError/Code/outcomeDiscarded`` when the saga moved on while the handler ran
    ///   (this compensation was already recorded by another delivery, or an operator acted).
    public func completeCompensation() async throws {
        try requirePhase(.compensation, "completeCompensation")
        try await execution.finish(.compensated, sagaID: sagaID, command: command)
    }

    /// Completes this compensation like ``completeCompensation()``, and runs `writes` (the undo
    /// on the service's own tables) in the transaction that records it: the undo happens exactly
    /// once, with the saga's step back. Errors as for
    /// ``completeStep(merging:writing:)-(JSONObject,_)``.
    public func completeCompensation(writing writes: [LocalWrite]) async throws {
        try requirePhase(.compensation, "completeCompensation")
        try await execution.finish(.compensated, localWrites: writes, sagaID: sagaID, command: command)
    }

    private func requirePhase(_ expected: StepPhase, _ call: String) throws {
        guard phase == expected else {
            throw SagaError(
                .invalidState,
                "\(call)() was called by the handler of '\(command)', which is a \(phase.rawValue)",
                recoverySuggestion: phase == .compensation
                    ? "call completeCompensation() in compensation handlers"
                    : "call completeStep() or failAndCompensate() in action handlers"
            )
        }
    }
}

/// The outcome a handler reports through its ``SagaContext``, as the runtime records it.
public enum SagaHandlerReport: Sendable, Hashable {
    /// The action completed; the patch is merged into the payload.
    case completed(JSONObject)
    /// The action failed: a business refusal (`retryable: false`, from
    /// ``SagaContext/failAndCompensate(reason:)``) or an error the step's retry policy handles.
    case failed(String, retryable: Bool)
    /// The compensation completed.
    case compensated
    /// The compensation failed; it is retried by the definition's compensation policy.
    case compensationFailed(String)

    /// The report for a handler of `phase` that threw `error` without reporting an outcome.
    ///
    /// An action's error is retried by the step's policy, unless no retry can mend it
    /// (``isPermanent(_:)``): then the step fails at once, as a refusal does (compensation before the
    /// pivot, *needs attention* from the pivot on), instead of being retried (for ever, past the
    /// pivot) on the same payload. A compensation's error is always retried by the definition's
    /// compensation policy.
    public static func thrown(_ error: any Error, phase: StepPhase) -> SagaHandlerReport {
        let message = String(describing: error)
        guard phase == .action else { return .compensationFailed(message) }
        return isPermanent(error)
            ? .failed("\(message) (not retried: \(permanenceReason))", retryable: false) : .failed(message, retryable: true)
    }

    /// Whether `error` fails the same way on every attempt with the same payload: the payload does
    /// not decode as the handler's type (``SagaContext/payload(as:)``'s `invalidPayload`, or a
    /// `DecodingError` of the handler's own decoding), or a value does not encode (`EncodingError`).
    public static func isPermanent(_ error: any Error) -> Bool {
        if let error = error as? SagaError { return error.code == .invalidPayload }
        return error is DecodingError || error is EncodingError
    }

    /// Said in a permanent failure's reason.
    static let permanenceReason = "the same payload fails the same way on every attempt"
}

/// What a handler does with its run's effect when its report was discarded
/// (``SagaError/Code/outcomeDiscarded``): ``SagaContext/discardedOutcome``.
public enum DiscardedOutcome: Sendable, Equatable {
    /// The saga is compensating (or compensated) and no run of this step counted: undo this
    /// run's effect, idempotently by the idempotency key, as the step's compensation would.
    case undoThisRun
    /// Leave the effect: another run of this step counted (a duplicate delivery, a re-send),
    /// or the saga may still count on it (a later attempt replays it by its key; the step's
    /// compensation undoes it if the saga compensates), or this was a compensation.
    case leaveTheEffect

    /// What to do after a report of the action or compensation of `step` was discarded with the
    /// saga at `latest`, and the recovery suggestion that says it.
    static func decide(phase: StepPhase, step: Int, latest: SagaState) -> (outcome: DiscardedOutcome, advice: String) {
        guard phase == .action else {
            return (.leaveTheEffect, "nothing to undo: another delivery or an operator already moved the saga on; do not report again")
        }
        if latest.history.contains(where: { $0.step == step && $0.phase == .action && $0.outcome == .completed }) {
            return (
                .leaveTheEffect,
                "the step counted in another run of it (a duplicate delivery or a re-send): leave its effect; do not report again"
            )
        }
        if latest.status == .compensating || latest.status == .compensated {
            return (
                .undoThisRun,
                "the step did not count and the saga is compensating: undo this run's effect (idempotently, as the step's compensation would); do not report again"
            )
        }
        return (.leaveTheEffect, mayStillCountAdvice)
    }

    /// The advice when the saga may still count on the run's effect (it runs the step again, or
    /// timed it out).
    static let mayStillCountAdvice =
        "leave this run's effect: the saga may still count on it (a later attempt replays it by its idempotency key, and the step's compensation undoes it if the saga compensates); do not report again"
}

/// A report the runtime discarded, with the decision about the run's effect; the handler sees
/// `error` (``StepExecution`` unwraps it) and the decision as ``SagaContext/discardedOutcome``.
struct DiscardedReport: Error {
    var error: SagaError
    var decision: DiscardedOutcome
}

/// One run of a handler: lets exactly one outcome be reported, and remembers whether reporting
/// it failed (then the delivery must not be acknowledged).
///
/// A report that the runtime discarded because the saga moved on (``SagaError/Code/outcomeDiscarded``)
/// is a final outcome, not a failure: the handler's call throws it, the delivery is acknowledged.
/// A report whose local writes were refused (`localWriteFailed`, `unsupported`) stored nothing:
/// the outcome is open again, for the handler to report another one (or to throw).
final class StepExecution: Sendable {
    private enum Progress: Sendable {
        case pending, reporting, reported
        /// The step's timeout fired first: the timeout is the outcome, the handler's report is
        /// discarded.
        case timedOut(Duration)
        case failed(any Error)
    }
    private let progress = Mutex(Progress.pending)
    private let discardedDecision = Mutex<DiscardedOutcome?>(nil)
    private let report: @Sendable (SagaHandlerReport, [LocalWrite]) async throws -> Void

    init(report: @escaping @Sendable (SagaHandlerReport, [LocalWrite]) async throws -> Void) {
        self.report = report
    }

    /// Whether an outcome was claimed already (reported, being reported, timed out, or failed to
    /// report).
    var isFinished: Bool {
        progress.withLock { if case .pending = $0 { false } else { true } }
    }

    /// The timeout, when the step's timeout claimed the outcome before the handler reported one.
    var timeout: Duration? {
        progress.withLock { if case .timedOut(let limit) = $0 { limit } else { nil } }
    }

    /// What to do with the run's effect, once a report was discarded.
    var discarded: DiscardedOutcome? { discardedDecision.withLock { $0 } }

    /// Records the decision for a discarded report (see ``SagaContext/discardedOutcome``).
    func recordDiscarded(_ outcome: DiscardedOutcome) {
        discardedDecision.withLock { $0 = outcome }
    }

    /// The error that reporting the outcome ended with, if it failed.
    var reportFailure: (any Error)? {
        progress.withLock { if case .failed(let error) = $0 { error } else { nil } }
    }

    private func claim() -> Bool {
        progress.withLock { progress in
            guard case .pending = progress else { return false }
            progress = .reporting
            return true
        }
    }

    /// Claims the outcome for the step's timeout; `false` when the handler claimed it first.
    func claimTimeout(_ limit: Duration) -> Bool {
        progress.withLock { progress in
            guard case .pending = progress else { return false }
            progress = .timedOut(limit)
            return true
        }
    }

    private func perform(_ body: () async throws -> Void) async throws {
        do {
            try await body()
            progress.withLock { $0 = .reported }
        } catch let discarded as DiscardedReport {
            recordDiscarded(discarded.decision)
            progress.withLock { $0 = .reported }
            throw discarded.error
        } catch let error as SagaError where error.code == .outcomeDiscarded {
            progress.withLock { $0 = .reported }
            throw error
        } catch let error as SagaError where error.code == .localWriteFailed || error.code == .unsupported {
            // Nothing was stored: the handler may report another outcome.
            progress.withLock { $0 = .pending }
            throw error
        } catch {
            progress.withLock { $0 = .failed(error) }
            throw error
        }
    }

    /// Reports an outcome; a second report is an error, and so is a report after the step's
    /// timeout (``SagaError/Code/outcomeDiscarded``).
    func finish(_ result: SagaHandlerReport, localWrites: [LocalWrite] = [], sagaID: SagaID = "", command: String = "") async throws {
        guard claim() else {
            if let limit = timeout {
                // The timeout is the outcome: a later attempt replays the effect by its key, or
                // the step's compensation (it runs for a step whose attempts ran out) undoes it.
                recordDiscarded(.leaveTheEffect)
                throw SagaError.outcomeDiscarded(
                    sagaID: sagaID, command: command, reason: "the step timed out after \(limit); the timeout is its outcome",
                    advice: DiscardedOutcome.mayStillCountAdvice)
            }
            throw SagaError(
                .invalidState, "the outcome of this step was already reported",
                recoverySuggestion: "call completeStep/failAndCompensate/completeCompensation once per handler run")
        }
        try await perform { try await report(result, localWrites) }
    }

    /// Reports an outcome when nothing was reported yet; does nothing otherwise.
    func finishIfNeeded(_ result: SagaHandlerReport) async throws {
        guard claim() else { return }
        try await perform { try await report(result, []) }
    }

    /// Records the timeout claimed by ``claimTimeout(_:)`` with `record` (once).
    func finishTimedOut(_ record: () async throws -> Void) async throws {
        let claimed = progress.withLock { progress in
            guard case .timedOut = progress else { return false }
            progress = .reporting
            return true
        }
        guard claimed else { return }
        try await perform(record)
    }
}
