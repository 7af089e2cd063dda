public import Foundation
public import Participant
import Synchronization

/// Runs one of your handlers the way a participant would, without a broker or a store, and says
/// what it did and what the saga does next — decided by SagaKit's own state machine from your
/// real definition.
///
/// ```swift
/// import SagaTesting
/// import Testing
///
/// @Test func chargeDeclinesLargeAmounts() async throws {
///     let tester = try SagaStepTester(definitions: [TripSaga.definition])
///     let run = try await tester.run("payment.charge", payload: ["amount": 5000], handler: charge)
///     #expect(run.report == .failed("card declined", retryable: false))
///     #expect(run.next.map(\.command) == ["hotel.cancel"])   // compensation starts
/// }
/// ```
///
/// The rules are the runtime's: returning without reporting counts as success (no payload
/// change); throwing is a retryable failure for an action and a failed attempt for a
/// compensation; reporting twice or with the wrong call for the phase is an error.
public struct SagaStepTester: Sendable {
    /// The definitions commands are looked up in.
    public let definitions: SagaDefinitionRegistry
    /// The instant the simulated saga runs at (fixed, so results are deterministic).
    public var now: Date

    /// Creates a tester for the definitions your handlers take part in (several versions of a
    /// saga are welcome: ``run(_:payload:attempt:sagaID:version:handler:)`` picks one).
    /// - Throws: `invalidDefinition` when two definitions share a name and a version.
    public init(definitions: [SagaDefinition], now: Date = Date(timeIntervalSince1970: 1_700_000_000)) throws {
        self.definitions = try SagaDefinitionRegistry(definitions)
        self.now = now
    }

    /// Runs `handler` for `command` (an action, a fallback or a compensation of one of the
    /// definitions) at `attempt`, on a saga positioned at that step with `payload`. A fallback
    /// runs on a saga whose primary action failed for good (at the last attempt of its retry
    /// policy, in the history): `attempt` counts the fallback's own attempts, and the command's
    /// attempt follows the primary's, as in production (a primary of 2 attempts: the fallback's
    /// first is attempt 3).
    ///
    /// - Parameters:
    ///   - command: the command name, e.g. `payment.charge`.
    ///   - payload: the saga payload the handler sees.
    ///   - attempt: the attempt number (retries are attempts 2, 3, …).
    ///   - sagaID: the saga id; the idempotency key derives from it, so two runs with the same id
    ///     and command share a key (see ``runTwice(_:payload:sagaID:version:handler:)``).
    ///   - version: the version of the saga's definition (``SagaContext/definitionVersion``): the
    ///     saga is positioned at the step that sends `command` in that version. By default the
    ///     newest version that sends it. To test that a handler of your new release still takes
    ///     the payload of sagas started on the older version (a rolling upgrade), run it with
    ///     the older version and an older payload.
    ///   - handler: your handler.
    /// - Throws: `unknownDefinition` when no definition (of that version) sends `command`.
    public func run(
        _ command: String, payload: JSONObject = [:], attempt: Int = 1, sagaID: SagaID = "test-saga", version: Int? = nil,
        handler: SagaHandler
    ) async throws -> SagaStepRun {
        let (definition, step, phase, fallback) = try locate(command, version: version)
        let state = Self.positioned(
            definition: definition, step: step, phase: phase, attempt: attempt, payload: payload, id: sagaID, now: now,
            primaryFailed: fallback)
        let current = SagaStateMachine(definition: definition).makeCommand(
            state, step: step, phase: phase, attempt: fallback ? state.attempt : max(1, attempt))
        return try await execute(handler, definition: definition, state: state, command: current, now: now)
    }

    /// Runs `handler` for a value handler type's command.
    public func run<Handler: SagaStepHandler>(
        _ handler: Handler, payload: JSONObject = [:], attempt: Int = 1, sagaID: SagaID = "test-saga", version: Int? = nil
    ) async throws -> SagaStepRun {
        try await run(Handler.command, payload: payload, attempt: attempt, sagaID: sagaID, version: version) {
            try await handler.handle($0)
        }
    }

    /// Delivers the same command twice (same saga, step, attempt and idempotency key), as the
    /// broker may after a crash, and returns both runs: assert that your service applied its
    /// effect once and reported the same outcome both times.
    public func runTwice(
        _ command: String, payload: JSONObject = [:], sagaID: SagaID = "test-saga", version: Int? = nil, handler: SagaHandler
    ) async throws -> (first: SagaStepRun, second: SagaStepRun) {
        let first = try await run(command, payload: payload, sagaID: sagaID, version: version, handler: handler)
        let second = try await run(command, payload: payload, sagaID: sagaID, version: version, handler: handler)
        return (first, second)
    }

    /// The definition, step and phase that send `command`, and whether it is the step's
    /// fallback.
    func locate(_ command: String, version: Int? = nil) throws -> (SagaDefinition, Int, StepPhase, fallback: Bool) {
        // The newest version first, unless one is asked for.
        let candidates = definitions.all.filter { version == nil || $0.version == version }.sorted {
            ($0.name, -$0.version) < ($1.name, -$1.version)
        }
        for definition in candidates {
            for (index, step) in definition.steps.enumerated() {
                if step.action == command { return (definition, index, .action, false) }
                if step.fallback?.action == command { return (definition, index, .action, true) }
                if step.compensation == command { return (definition, index, .compensation, false) }
            }
        }
        throw SagaError(
            .unknownDefinition,
            "no saga definition\(version.map { " of version \($0)" } ?? "") sends the command '\(command)' (known: \(definitions.all.flatMap(\.commands).sorted().joined(separator: ", ")))",
            recoverySuggestion: "pass the definition that contains this command to SagaStepTester(definitions:)")
    }

    /// A saga whose current command is `phase` of `step`: the steps before it completed (and,
    /// for a compensation, the step itself completed and a later one failed; with
    /// `primaryFailed`, the step's primary action failed for good at the last attempt of its
    /// retry policy, so that its fallback runs at `attempt` of its own).
    static func positioned(
        definition: SagaDefinition, step: Int, phase: StepPhase, attempt: Int, payload: JSONObject, id: SagaID, now: Date,
        primaryFailed: Bool = false
    ) -> SagaState {
        let machine = SagaStateMachine(definition: definition)
        // Pinned to its version, as a manager pins a saga.
        var (state, _) = machine.start(
            id: id, payload: payload, context: [SagaState.definitionVersionKey: String(definition.version)], now: now)
        let group = definition.groupRange(of: step)
        // An action in a parallel group runs as the group's last member to finish: the other
        // members completed.
        let completedThrough = phase == .action ? (group?.upperBound ?? step - 1) : step
        var history: [StepRecord] = []
        if completedThrough >= 0 {
            for index in 0...completedThrough where !(phase == .action && index == step) {
                history.append(
                    StepRecord(
                        step: index, stepName: definition.steps[index].name, phase: .action, attempt: 1, startedAt: now, finishedAt: now,
                        outcome: .completed))
            }
        }
        if phase == .action, group != nil, attempt > 1 {
            // A member's attempt is read from its history: the earlier attempts failed.
            for earlier in 1..<attempt {
                history.append(
                    StepRecord(
                        step: step, stepName: definition.steps[step].name, phase: .action, attempt: earlier, startedAt: now,
                        finishedAt: now, outcome: .retrying, error: "an earlier attempt failed (simulated by SagaStepTester)"))
            }
        }
        // The primary failed for good at its last attempt (its retry policy's), as in production.
        let primaryAttempts = primaryFailed ? max(1, definition.steps[step].options.retry.maxAttempts) : 0
        if primaryFailed && phase == .action {
            history.append(
                StepRecord(
                    step: step, stepName: definition.steps[step].name, phase: .action, attempt: primaryAttempts, startedAt: now,
                    finishedAt: now, outcome: .failed, error: "the primary action failed for good (simulated by SagaStepTester)"))
        }
        state.history = history
        state.currentStep = phase == .action ? (group?.lowerBound ?? step) : step
        state.attempt = phase == .action && group != nil ? 1 : max(1, attempt) + primaryAttempts
        if phase == .compensation {
            state.status = .compensating
            state.failureReason = "a later step failed (simulated by SagaStepTester)"
        }
        return state
    }

    func execute(
        _ handler: SagaHandler, definition: SagaDefinition, state: SagaState, command: SagaCommand? = nil, now: Date,
        localWrites runner: SagaTestSystem.LocalWriteRunner? = nil
    ) async throws -> SagaStepRun {
        let machine = SagaStateMachine(definition: definition)
        let current = command ?? machine.command(for: state).command
        let recorder = ReportRecorder()
        let runnerFailure = Mutex<(any Error)?>(nil)
        let sagaID = state.id
        let context = SagaContext(
            sagaID: state.id, sagaName: state.name, stepName: current.stepName, step: current.step, phase: current.phase,
            attempt: current.attempt, command: current.command, payload: state.payload, sagaContext: state.context,
            idempotencyKey: current.idempotencyKey(incarnation: state.incarnation),
            reportWithLocalWrites: { report, writes in
                if let runner, !writes.isEmpty {
                    do {
                        try await runner(sagaID, writes)
                    } catch let error as SagaError where error.code == .localWriteFailed {
                        // As from a store: nothing stored, the handler may report another outcome.
                        throw error
                    } catch {
                        // Not the writes' fault (the test's database): the test fails with it.
                        runnerFailure.withLock { $0 = error }
                        throw error
                    }
                }
                recorder.record(report, writes)
            })
        var thrown: (any Error)?
        do {
            try await handler(context)
        } catch {
            if !context.hasReported { thrown = error }
        }
        if let failure = runnerFailure.withLock({ $0 }) { throw failure }
        let report: SagaHandlerReport
        if let recorded = recorder.report {
            report = recorded
        } else if let thrown {
            report = .thrown(thrown, phase: current.phase)
        } else {
            report = current.phase == .action ? .completed([:]) : .compensated
        }
        let event: SagaEvent =
            switch report {
            case .completed(let patch): .stepCompleted(step: current.step, attempt: current.attempt, patch: patch, startedAt: now)
            case .failed(let error, let retryable):
                .stepFailed(step: current.step, attempt: current.attempt, error: error, retryable: retryable, startedAt: now)
            case .compensated: .compensationCompleted(step: current.step, attempt: current.attempt, startedAt: now)
            case .compensationFailed(let error):
                .compensationFailed(step: current.step, attempt: current.attempt, error: error, startedAt: now)
            }
        switch machine.apply(event, to: state, now: now) {
        case .transition(let next, let commands):
            return SagaStepRun(
                command: current, report: report, handlerThrew: thrown.map { String(describing: $0) }, before: state, after: next,
                scheduled: commands,
                localWrites: recorder.localWrites)
        case .ignored(let reason), .rejected(let reason):
            throw SagaError(.invalidState, "the state machine did not accept the handler's outcome: \(reason)")
        }
    }
}

/// What one handler run did, and what the saga does next.
public struct SagaStepRun: Sendable {
    /// The command the handler served.
    public let command: SagaCommand
    /// The outcome as the runtime records it (returning without a report is `completed([:])` or
    /// `compensated`; a throw is a retryable `failed` or a `compensationFailed`).
    public let report: SagaHandlerReport
    /// The handler's error when it threw without reporting.
    public let handlerThrew: String?
    /// The saga before the handler ran.
    public let before: SagaState
    /// The saga after the runtime recorded the outcome.
    public let after: SagaState
    /// The commands the runtime publishes next, with their delays.
    public let scheduled: [ScheduledCommand]
    /// The local writes the handler reported with its outcome (`completeStep(merging:writing:)`
    /// and the like): a SQL store would run them in the transaction that records the outcome.
    public let localWrites: [LocalWrite]

    /// The commands published next.
    public var next: [SagaCommand] { scheduled.map(\.command) }

    /// Whether the same step is sent again (a retry).
    public var willRetry: Bool {
        next.contains { $0.step == command.step && $0.phase == command.phase && $0.attempt > command.attempt }
    }

    /// Whether this run ended the saga's forward path: the saga is compensating now, or is
    /// compensated at once because no completed step needs undoing (a first step that refuses).
    public var startedCompensation: Bool {
        before.status == .running && (after.status == .compensating || after.status == .compensated)
    }

    /// The payload after the handler's patch.
    public var payload: JSONObject { after.payload }
}

/// Keeps the one report a context accepts, with its local writes.
private final class ReportRecorder: Sendable {
    private let stored = Mutex<(report: SagaHandlerReport?, writes: [LocalWrite])>((nil, []))
    var report: SagaHandlerReport? { stored.withLock { $0.report } }
    var localWrites: [LocalWrite] { stored.withLock { $0.writes } }
    func record(_ report: SagaHandlerReport, _ writes: [LocalWrite]) { stored.withLock { $0 = (report, writes) } }
}
