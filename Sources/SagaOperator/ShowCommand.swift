import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// `saga show <id>`: a saga's state, its history as a timeline (handlers, the reaper and
/// operators: who, when, why), and what happens next.
struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show a saga: state, payload, its history as a timeline (with operator actions), and what happens next.",
        discussion: "JSON (--json): {saga, timeline, next, nextStep}; see Docs/Operations.md."
    )

    @OptionGroup var connection: OperatorOptions

    @Argument(help: "The saga id.")
    var id: String

    @Flag(help: "Print JSON: the stored state, the timeline, and what happens next.")
    var json = false

    /// `saga show --json`.
    struct Output: Encodable {
        /// The stored state, as `saga list --json` prints it.
        var saga: SagaState
        /// The history in order, with the start and (for a finished saga) the end.
        var timeline: [TimelineEntry]
        /// What happens next, in words (the text `saga show` prints under "next").
        var next: String
        /// What happens next, as data.
        var nextStep: NextStep
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let id = id
        let configuration = environment.configuration
        let json = json
        // Inside the store's scope: its definitions say what happens next.
        try await environment.withStore { store in
            let state = environment.redactor.redact(try await store.load(id))
            var next = Self.next(state, configuration: configuration)
            if let directory = await ServiceDirectory.load(from: store) {
                next.addHandlers(from: directory, topology: state.topology ?? configuration.topology.prefix)
            }
            if !state.status.hasEnded, let pending = try? await store.pendingOutbox(of: state.id) {
                next.addOutbox(pending, now: Date())
            }
            if json {
                try printJSON(Output(saga: state, timeline: Self.timeline(state), next: next.text, nextStep: next))
                return
            }
            print(Self.render(state, next: next))
        }
    }

    /// An operator command (`saga retry <id>`, as JSON and the console name it) as this tool is
    /// called.
    static func spelled(_ command: String) -> String {
        command.hasPrefix("saga ") ? SagaOperatorTool.toolName + command.dropFirst(4) : command
    }

    // MARK: - Timeline

    /// One line of the timeline.
    struct TimelineEntry: Encodable, Equatable {
        /// `started`, `step` (a handler's outcome), `skipped` (a step whose condition did not
        /// hold, or a wait that timed out and continued), `signal` (a wait step's signal arrived:
        /// ``actor`` sent it, ``reason`` names it), `wait` (a wait that ended without its signal:
        /// ``waitedSeconds``), `reaper` (a re-send, or the reaper gave up), `operator` (a retry or
        /// compensation someone asked for, or work they resolved by hand), `finished`.
        var event: String
        /// When it happened.
        var at: Date
        /// Seconds after the saga started.
        var offsetSeconds: Double
        var step: Int?
        var stepName: String?
        /// `action` or `compensation`.
        var phase: String?
        var attempt: Int?
        /// The ``StepOutcome`` raw value (`completed`, `retrying`, `failed`, `resent`,
        /// `retryRequested`, `compensationRequested`, `skipped`), or the final status for
        /// `finished`.
        var outcome: String?
        /// How long the handler ran (handler outcomes only).
        var handlerSeconds: Double?
        /// How long the saga waited for a signal (`signal` entries of a saga that was waiting).
        var waitedSeconds: Double? = nil
        var error: String?
        var timedOut: Bool?
        /// Who asked (operator actions).
        var actor: String?
        /// Why (operator actions, when given; skipped steps: the condition that did not hold).
        var reason: String?
        /// The process that recorded it (``SagaCore/StepRecord/instance``), when a participant did.
        var instance: String? = nil
    }

    /// The saga's history as timeline entries, with its start and, once finished, its end.
    static func timeline(_ state: SagaState) -> [TimelineEntry] {
        var entries = [
            TimelineEntry(event: "started", at: state.createdAt, offsetSeconds: 0)
        ]
        let definition = pinnedDefinition(of: state)
        for record in state.history {
            let event: String
            let isWait =
                definition.map { $0.steps.indices.contains(record.step) && $0.steps[record.step].wait != nil }
                ?? (record.reason?.hasPrefix("signal '") == true)
            if isWait && record.outcome == .completed && record.phase == .action {
                // A signal: who sent it and how long the saga waited (none for an early signal).
                let early = record.reason?.hasSuffix("before the saga reached the wait") == true
                entries.append(
                    TimelineEntry(
                        event: "signal", at: record.finishedAt, offsetSeconds: record.finishedAt.timeIntervalSince(state.createdAt),
                        step: record.step, stepName: record.stepName, phase: record.phase.rawValue, attempt: record.attempt,
                        outcome: record.outcome.rawValue,
                        waitedSeconds: early ? nil : record.finishedAt.timeIntervalSince(record.startedAt), actor: record.actor,
                        reason: record.reason))
                continue
            }
            let resolvedByHand = record.outcome == .completed && record.actor != nil && record.reason?.hasPrefix("resolved by hand") == true
            if record.outcome.isOperatorAction || resolvedByHand {
                event = "operator"
            } else if isWait && record.phase == .action && record.outcome != .skipped {
                // A wait that ended without its signal (its timeout): how long it waited, no handler ran.
                // (A wait skipped by its condition never waited: it is a skipped step.)
                entries.append(
                    TimelineEntry(
                        event: "wait", at: record.finishedAt, offsetSeconds: record.finishedAt.timeIntervalSince(state.createdAt),
                        step: record.step, stepName: record.stepName, phase: record.phase.rawValue, attempt: record.attempt,
                        outcome: record.outcome.rawValue, waitedSeconds: record.finishedAt.timeIntervalSince(record.startedAt),
                        error: record.error, reason: record.reason, instance: record.instance))
                continue
            } else if record.outcome == .skipped {
                event = "skipped"
            } else if record.outcome == .resent || (record.outcome == .failed && record.error?.hasPrefix("stalled at step") == true) {
                event = "reaper"
            } else {
                event = "step"
            }
            let handler = event == "step" ? record.finishedAt.timeIntervalSince(record.startedAt) : nil
            entries.append(
                TimelineEntry(
                    event: event, at: record.finishedAt, offsetSeconds: record.finishedAt.timeIntervalSince(state.createdAt),
                    step: record.step, stepName: record.stepName, phase: record.phase.rawValue, attempt: record.attempt,
                    outcome: record.outcome.rawValue, handlerSeconds: handler, error: record.error, timedOut: record.timedOut,
                    actor: record.actor, reason: record.reason, instance: record.instance))
        }
        if state.status.isTerminal {
            entries.append(
                TimelineEntry(
                    event: "finished", at: state.updatedAt, offsetSeconds: state.updatedAt.timeIntervalSince(state.createdAt),
                    outcome: state.status.cliName, reason: state.failureReason))
        }
        return entries
    }

    static func render(_ state: SagaState, next: NextStep) -> String {
        var lines: [String] = []
        lines.append("saga \(state.id)")
        lines.append("  definition  \(state.name) version \(state.definitionVersion)")
        lines.append("  status      \(state.status.cliName.uppercased())\(state.status.isTerminal ? "" : " at \(position(state))")")
        lines.append("  started     \(isoFormatter.string(from: state.createdAt)) (\(age(state.createdAt)))")
        let elapsed = state.updatedAt.timeIntervalSince(state.createdAt)
        lines.append(
            "  updated     \(isoFormatter.string(from: state.updatedAt)) (+\(formatSeconds(elapsed)) after the start, \(age(state.updatedAt)))"
        )
        lines.append(
            "  version     \(state.version)\(state.reapAttempts > 0 ? " · re-sent by the reaper \(state.reapAttempts) time(s)" : "")")
        if let deadline = state.deadline { lines.append("  deadline    \(isoFormatter.string(from: deadline))") }
        if let reason = state.failureReason { lines.append("  reason      \(reason)") }
        lines.append("  payload     \((try? JSONCoding.encode(state.payload)).map { String(decoding: $0, as: UTF8.self) } ?? "?")")
        if !state.context.isEmpty {
            lines.append("  context     \(state.context.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        }
        lines.append("")
        lines.append("timeline (time after the start · step · phase and attempt · outcome · handler time · the process that recorded it)")
        for entry in timeline(state) { lines.append(line(entry)) }
        lines.append("")
        lines.append("next")
        // Errors, reasons and names come from handlers and operators: each line is printed with
        // its control characters escaped (one entry, one line; no terminal escapes).
        lines += next.text.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }
        return lines.map(PrintableText.escaped).joined(separator: "\n")
    }

    /// One timeline line for people.
    static func line(_ entry: TimelineEntry) -> String {
        // Stores keep milliseconds: below one, say so instead of printing microseconds.
        let at = entry.offsetSeconds < 0.001 ? "+0 ms" : "+" + formatSeconds(entry.offsetSeconds)
        switch entry.event {
        case "started":
            return "  \(pad(at, 10))  saga started"
        case "finished":
            return "  \(pad(at, 10))  saga \(entry.outcome ?? "finished")"
        default:
            break
        }
        if entry.event == "skipped" {
            let line =
                "  \(pad(at, 10))  \(pad(entry.stepName ?? "?", 16))  \(pad("", 16))  skipped      \(entry.reason ?? "condition not met")"
            return line.trimmingTrailingSpaces()
        }
        let head = "  \(pad(at, 10))  \(pad(entry.stepName ?? "?", 16))  \(pad("\(entry.phase ?? "?") #\(entry.attempt ?? 0)", 16))"
        if entry.event == "signal" {
            let waited = entry.waitedSeconds.map { " after waiting \(humanDuration($0))" } ?? ""
            return "\(head)  signalled      by \(entry.actor ?? "(nobody named)")\(waited): \(entry.reason ?? "a signal")"
        }
        if entry.event == "wait" {
            let waited = entry.waitedSeconds.map { " after waiting \(humanDuration($0))" } ?? ""
            let outcome = entry.outcome.flatMap(StepOutcome.init(rawValue:)).map(describe) ?? (entry.outcome ?? "?")
            return
                "\(head)  \(pad(outcome, 13))  no signal\(waited)\(entry.instance.map { " (on \($0))" } ?? "")\(entry.error.map { ": \($0)" } ?? "")"
        }
        if entry.event == "operator" {
            let what =
                switch entry.outcome {
                case StepOutcome.compensationRequested.rawValue: "compensation requested"
                case StepOutcome.completed.rawValue: "resolved by hand"
                default: "retry requested"
                }
            let reason = entry.reason.map { $0.hasPrefix("resolved by hand: ") ? String($0.dropFirst("resolved by hand: ".count)) : $0 }
            let why = reason.map { ": \"\($0)\"" } ?? " (no reason given)"
            return "\(head)  \(what) by \(entry.actor ?? "an unnamed operator") at \(isoFormatter.string(from: entry.at))\(why)"
        }
        let outcome = entry.outcome.flatMap(StepOutcome.init(rawValue:)).map(describe) ?? (entry.outcome ?? "?")
        let took = entry.handlerSeconds.map { $0 < 0.001 ? "<1 ms" : formatSeconds($0) } ?? ""
        var line = "\(head)  \(pad(outcome, 13))  \(pad(took, 8))"
        if entry.timedOut == true { line += "  (timed out)" }
        if let instance = entry.instance { line += "  on \(instance)" }
        if let error = entry.error { line += "  \(error)" }
        return line.trimmingTrailingSpaces()
    }

    static func describe(_ outcome: StepOutcome) -> String {
        switch outcome {
        case .completed: "completed"
        case .retrying: "failed, retry"
        case .failed: "FAILED"
        case .resent: "re-sent"
        case .retryRequested: "retry requested"
        case .compensationRequested: "compensation requested"
        case .skipped: "skipped"
        }
    }

    // MARK: - Next

    /// What happens to a saga next.
    struct NextStep: Encodable, Equatable {
        /// `waiting` (a command is on its way to a handler), `retrying` (a failed attempt waits in a
        /// delay queue), `waiting-for-signal` (the saga waits at a wait step: see ``wait``),
        /// `needs-operator`, `finished`, or `unknown` (the definition is unknown).
        var kind: String
        /// The first line of ``text``.
        var summary: String
        /// Everything the tool can say, for people (the `next` section of `saga show`).
        var text: String
        /// The command expected to run next, with its step, phase and attempt.
        var command: String?
        var step: Int?
        var stepName: String?
        var phase: String?
        var attempt: Int?
        /// When a delayed retry is (or was) due.
        var retryAt: Date?
        /// The delay level the retry waits in, in seconds.
        var delaySeconds: Int?
        /// When the reaper re-sends the command if nothing happens.
        var stalledAt: Date?
        /// The `saga` commands an operator can run now.
        var operatorCommands: [String]
        /// For a saga in a parallel group: every member and where it stands (``command`` and
        /// ``step`` are then the first running member's, or the first an operator's retry
        /// re-runs); absent otherwise.
        var group: Group? = nil
        /// For a saga waiting for a signal: the signal, until when, and what the timeout does;
        /// absent otherwise.
        var wait: Wait? = nil
        /// The services whose processes handle ``command``, from their records in the store;
        /// absent when there is no command to run or the store keeps no such records.
        var handledBy: ServiceDirectory.Handlers? = nil

        /// The saga's messages still in the outbox (not yet published), from the store; absent
        /// when there are none or the store cannot list them.
        var unpublished: Unpublished? = nil

        /// Messages of the saga the outbox relay has not published yet.
        struct Unpublished: Encodable, Equatable {
            /// Their routing keys (commands), oldest first.
            var routingKeys: [String]
            /// Failed publishes of the oldest: the broker refused it (no queue bound to its routing
            /// key, say) or did not confirm it.
            var failedPublishes: Int
        }

        /// Replaces "sent to exchange …" by what the outbox says when the saga's messages have not
        /// reached the broker (a user's `saga show` said "sent" for a command the broker kept
        /// refusing: no queue was bound to it yet).
        mutating func addOutbox(_ pending: [OutboxMessage], now: Date, gracePeriod: Duration = .seconds(5)) {
            guard let oldest = pending.first else { return }
            // A message a process is publishing right now is not news.
            guard oldest.publishAttempts > 0 || now.timeIntervalSince(oldest.createdAt) > gracePeriod.seconds else { return }
            let keys = pending.map(\.routingKey)
            unpublished = Unpublished(routingKeys: keys, failedPublishes: oldest.publishAttempts)
            let quoted = keys.map { "'\($0)'" }.joined(separator: ", ")
            let line =
                oldest.publishAttempts > 0
                ? "not published yet: \(quoted) is in the outbox, and \(oldest.publishAttempts) publish(es) failed — unroutable when no queue is bound to it yet (start the service that handles it), the broker lost an exchange or a queue (deleted while the services ran: a service declares its topology again at its next publish, or restart it), or the broker refused it (the services' logs say which); the outbox relay keeps trying"
                : "not published yet: \(quoted) is in the outbox since \(age(oldest.createdAt, now: now)); the outbox relay of a running participant publishes it"
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if let index = lines.firstIndex(where: { $0.hasPrefix("sent to exchange ") }) {
                lines[index] = line
            } else {
                lines.insert(line, at: min(1, lines.count))
            }
            text = lines.joined(separator: "\n")
        }

        /// Adds who handles ``command`` (as data, and as the text's second line).
        mutating func addHandlers(from directory: ServiceDirectory, topology: String) {
            guard let command, kind != "finished", kind != "waiting-for-signal" else { return }
            handledBy = directory.handlers(of: command, topology: topology)
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            lines.insert(directory.describe(command, topology: topology, tool: SagaOperatorTool.toolName), at: min(1, lines.count))
            text = lines.joined(separator: "\n")
        }

        /// What a waiting saga waits for.
        struct Wait: Encodable, Equatable {
            /// The signal's name (what `saga signal ID NAME` delivers).
            var signal: String
            /// When the wait times out: the reaper ends it at its first pass after this.
            var until: Date
            /// The wait's timeout, in seconds.
            var timeoutSeconds: Double
            /// `compensate` or `continue`: what happens at the timeout without the signal.
            var onTimeout: String
            /// The command that delivers the signal (with placeholders for the data and the sender).
            var signalCommand: String
        }

        /// A parallel group a saga is in.
        struct Group: Encodable, Equatable {
            /// The group's name.
            var name: String
            /// Its members in declaration order.
            var members: [Member]
        }

        /// A member of a parallel group.
        struct Member: Encodable, Equatable {
            var step: Int
            var stepName: String
            /// `running`, `completed`, `failed` or `skipped`.
            var progress: String
            /// The attempt expected (running members).
            var attempt: Int?
            /// The action's command (running members).
            var command: String?
            /// Whether a failed member timed out (so it is compensated too).
            var timedOut: Bool?
        }
    }

    /// What will happen to the saga next.
    static func next(_ state: SagaState, configuration: OperatorConfiguration, now: Date = Date()) -> NextStep {
        func make(_ kind: String, _ lines: [String], commands: [String] = []) -> NextStep {
            NextStep(
                kind: kind, summary: lines.first ?? "", text: lines.joined(separator: "\n"), operatorCommands: commands)
        }
        switch state.status {
        case .completed:
            return make("finished", ["finished: every step completed."])
        case .compensated:
            // A saga whose first step refused completed nothing: nothing was undone.
            let undone = state.history.contains { $0.phase == .compensation && $0.outcome == .completed }
            let what = undone ? "the completed steps were compensated" : "compensated with nothing to undo (no step had completed)"
            return make("finished", ["finished: \(what). Why: \(state.failureReason ?? "no reason recorded")"])
        default:
            break
        }
        guard let definition = pinnedDefinition(of: state), definition.steps.indices.contains(state.currentStep) else {
            return make(
                "unknown",
                [
                    "unknown: neither this tool nor the store knows the definition '\(state.name)' version \(state.definitionVersion)",
                    "(start a participant or manager that runs it: they register their definitions in the store)",
                ])
        }
        let step = definition.steps[state.currentStep]
        let reaper = configuration.reaper
        if let group = GroupProgress(state, definition: definition) {
            return groupNext(state, group: group, definition: definition, configuration: configuration, now: now)
        }
        if let wait = WaitProgress(state, definition: definition) {
            return waitNext(state, wait: wait, definition: definition, configuration: configuration, now: now)
        }
        if state.status == .needsAttention {
            let stuckInCompensation = state.history.last(where: { $0.step == state.currentStep })?.phase == .compensation
            let command = stuckInCompensation ? (step.compensation ?? step.action) : step.action
            let canCompensate = !stuckInCompensation && !definition.isForwardOnly(state.currentStep)
            var commands = ["saga retry \(state.id)"]
            if canCompensate { commands.append("saga compensate \(state.id)") }
            commands.append("saga resolve \(state.id)")
            let tool = SagaOperatorTool.toolName
            var lines = [
                "needs an operator: " + commands.map { "`\(Self.spelled($0))`" }.joined(separator: " or "),
                "stopped: \(state.failureReason ?? "no reason recorded")",
                "`\(tool) retry \(state.id) --reason …` sends '\(command)' again as attempt \(state.attempt + 1)",
            ]
            if canCompensate {
                lines.append("`\(tool) compensate \(state.id) --reason …` undoes the completed steps instead")
            }
            let after =
                stuckInCompensation
                ? "the earlier compensations run next" : "the saga goes on with the step after '\(step.name)'"
            lines.append(
                "`\(tool) resolve \(state.id) --reason …` records that you did '\(command)' by hand (it will not run); \(after)")
            var next = make("needs-operator", lines, commands: commands)
            next.command = command
            next.step = state.currentStep
            next.stepName = step.name
            next.phase = (stuckInCompensation ? StepPhase.compensation : .action).rawValue
            next.attempt = state.attempt + 1
            return next
        }

        // Running or compensating: a command is on its way, now or after a delay.
        let command = SagaStateMachine(definition: definition).command(for: state).command
        let where_ = "step \(state.currentStep + 1) '\(step.name)', \(command.phase.rawValue)"
        var lines: [String] = []
        var kind = "waiting"
        var retryAt: Date?
        var delaySeconds: Int?
        let last = state.history.last { $0.step == state.currentStep && $0.phase == command.phase }
        if let last, last.outcome == .retrying {
            let policy = command.phase == .action ? step.options.retry : definition.compensationRetry
            let level = configuration.topology.delayLevel(for: policy.delay(afterAttempt: last.attempt))
            let due = last.finishedAt.addingTimeInterval(Double(level))
            (retryAt, delaySeconds) = (due, level)
            if due > now {
                kind = "retrying"
                lines.append(
                    "retrying at \(isoFormatter.string(from: due)) (delay level \(level) s): '\(command.command)' attempt \(command.attempt) (\(where_))"
                )
            } else {
                lines.append(
                    "waiting for a service to run '\(command.command)' attempt \(command.attempt) (\(where_)); the retry was due at \(isoFormatter.string(from: due)) (delay level \(level) s)"
                )
            }
            lines.append("the last attempt failed: \(last.error ?? "no error recorded")")
        } else {
            lines.append("waiting for a service to run '\(command.command)' attempt \(command.attempt) (\(where_))")
            if let last, last.outcome == .retryRequested {
                lines.append("sent again at \(isoFormatter.string(from: last.finishedAt)) for \(last.actor ?? "an operator")'s retry")
            }
        }
        lines.append("sent to exchange \(configuration.topology.commandsExchange), routing key '\(command.command)'")
        if definition.isForwardOnly(state.currentStep) && state.status == .running {
            lines.append("past the pivot: failures are retried forward until the handler succeeds, never compensated")
            if state.attempt >= 5 {
                lines.append(
                    "attempted \(state.attempt) times: fix what makes the handler fail; `\(SagaOperatorTool.toolName) retry \(state.id)` then runs it at once; if it can never succeed, `\(SagaOperatorTool.toolName) stop \(state.id) --reason …` stops it for you to resolve by hand"
                )
            }
        } else if state.status == .running {
            let left = max(0, step.options.retry.maxAttempts - state.attempt)
            lines.append(
                "a business failure (failAndCompensate) compensates at once; a thrown error is retried (\(left) retry(ies) left), then the saga compensates"
            )
        } else {
            let left = max(0, definition.compensationRetry.maxAttempts - state.attempt)
            lines.append("a failing compensation is retried (\(left) retry(ies) left), then the saga needs an operator")
        }
        if state.status == .running, let deadline = state.deadline {
            // Cleared at the pivot: a saga that still has one is before it.
            lines.append(
                "deadline \(isoFormatter.string(from: deadline)): still running before its pivot then, the saga is compensated (checked when its command is delivered, and by the reaper's passes while nobody takes it)"
            )
        }
        let stalledAt = state.updatedAt.addingTimeInterval(reaper.stalledThreshold.seconds)
        lines.append(
            "if nothing happens by \(isoFormatter.string(from: stalledAt)), the reaper re-sends it (\(max(0, reaper.maxReapAttempts - state.reapAttempts)) re-send(s) left before the saga needs an operator)"
        )
        // The store cannot know that a service refused the command; the broker's queue can.
        lines.append(
            "if a service could not take the command, it is in the dead-letter queue with the reason (the store cannot tell): `\(SagaOperatorTool.toolName) dlq list --saga \(state.id)`"
        )
        var next = make(kind, lines)
        next.command = command.command
        next.step = state.currentStep
        next.stepName = step.name
        next.phase = command.phase.rawValue
        next.attempt = command.attempt
        next.retryAt = retryAt
        next.delaySeconds = delaySeconds
        next.stalledAt = stalledAt
        return next
    }

    /// What happens next to a saga that waits for a signal: what an operator runs to approve
    /// (`saga signal`) or reject (`saga compensate`), and what the timeout does.
    static func waitNext(
        _ state: SagaState, wait: WaitProgress, definition: SagaDefinition, configuration: OperatorConfiguration, now: Date
    ) -> NextStep {
        let signal = "saga signal \(state.id) \(wait.wait.signal) --data '{…}' --by <you>"
        let canCompensate = !definition.isForwardOnly(state.currentStep)
        let after =
            wait.step + 1 < definition.steps.count
            ? "step \(wait.step + 2) '\(definition.steps[wait.step + 1].name)'" : "nothing more (the saga completes)"
        let undone = definition.steps[..<wait.step].filter { $0.compensation != nil }.map(\.name).reversed()
        let undoes = undone.isEmpty ? "nothing to undo: the saga ends compensated" : "undoes " + undone.joined(separator: ", ")
        var lines = [
            "waiting for signal '\(wait.wait.signal)' (step \(wait.step + 1) '\(wait.stepName)') until \(isoSeconds(wait.until)) (\(wait.remaining(now: now)))",
            "to approve: `\(signal)` (the data is merged into the saga's payload; the saga goes on with \(after))",
        ]
        if canCompensate {
            lines.append("to reject: `\(SagaOperatorTool.toolName) compensate \(state.id) --reason …` (\(undoes))")
        }
        let timeout = humanDuration(wait.wait.timeout.seconds)
        switch wait.wait.onTimeout {
        case .compensate:
            lines.append("at the timeout (\(timeout) after it began to wait) without the signal, the saga is compensated (\(undoes))")
        case .continue:
            lines.append(
                "at the timeout (\(timeout) after it began to wait) without the signal, the saga goes on with \(after) (the wait is recorded as skipped)"
            )
        }
        lines.append(
            "the reaper ends an expired wait at its first pass after the timeout (every \(humanDuration(configuration.reaper.pollInterval.seconds)); `\(SagaOperatorTool.toolName) reap` runs a pass now); a signal after that is ignored"
        )
        var commands = ["saga signal \(state.id) \(wait.wait.signal)"]
        if canCompensate { commands.append("saga compensate \(state.id)") }
        var next = NextStep(
            kind: "waiting-for-signal", summary: lines[0], text: lines.joined(separator: "\n"), operatorCommands: commands,
            wait: NextStep.Wait(
                signal: wait.wait.signal, until: wait.until, timeoutSeconds: wait.wait.timeout.seconds,
                onTimeout: wait.wait.onTimeout.rawValue, signalCommand: signal))
        next.step = wait.step
        next.stepName = wait.stepName
        next.phase = StepPhase.action.rawValue
        return next
    }

    /// What happens next to a saga in a parallel group: its running members' commands (each
    /// possibly in a retry delay), or for a saga stopped there, what an operator's retry re-runs.
    static func groupNext(
        _ state: SagaState, group: GroupProgress, definition: SagaDefinition, configuration: OperatorConfiguration, now: Date
    ) -> NextStep {
        let forwardOnly = definition.isForwardOnly(group.steps.lowerBound)
        let exchange = configuration.topology.commandsExchange
        let data = NextStep.Group(
            name: group.name,
            members: group.members.map { member in
                let action = definition.steps[member.step].action
                switch member.progress {
                case .running(let attempt):
                    return .init(
                        step: member.step, stepName: member.name, progress: GroupProgress.word(member.progress), attempt: attempt,
                        command: action)
                case .failed(let uncertain):
                    return .init(
                        step: member.step, stepName: member.name, progress: GroupProgress.word(member.progress),
                        timedOut: uncertain ? true : nil)
                case .completed, .skipped:
                    return .init(step: member.step, stepName: member.name, progress: GroupProgress.word(member.progress))
                }
            })
        func located(_ member: GroupProgress.Member) -> String { "step \(member.step + 1) '\(member.name)', action" }
        let compensates =
            "the completed members (newest declared first) and the steps before are compensated; a failed member is not, unless it timed out"

        if state.status == .needsAttention {
            // What the state machine's retry re-runs: the members still running (the reaper gave
            // up on them), or when none runs, the members that failed for good.
            var targets = group.running.compactMap { member -> (GroupProgress.Member, Int)? in
                guard case .running(let attempt) = member.progress else { return nil }
                return (member, attempt + 1)
            }
            if targets.isEmpty {
                targets = group.failed.map { member in
                    let last = state.history.last { $0.step == member.step && $0.phase == .action && $0.outcome == .failed }
                    return (member, (last?.attempt ?? 1) + 1)
                }
            }
            var commands = ["saga retry \(state.id)"]
            if !forwardOnly { commands.append("saga compensate \(state.id)") }
            commands.append("saga resolve \(state.id)")
            var lines = [
                "needs an operator: " + commands.map { "`\(Self.spelled($0))`" }.joined(separator: " or "),
                "stopped: \(state.failureReason ?? "no reason recorded")",
                "stopped in \(group.text)",
            ]
            if !targets.isEmpty {
                lines.append(
                    "`\(SagaOperatorTool.toolName) retry \(state.id) --reason …` sends again: "
                        + targets.map { "'\(definition.steps[$0.0.step].action)' as attempt \($0.1) (\(located($0.0)))" }.joined(
                            separator: ", "))
            }
            if !forwardOnly {
                lines.append(
                    "`\(SagaOperatorTool.toolName) compensate \(state.id) --reason …` undoes instead: the completed and unfinished members (newest declared first), then the steps before"
                )
            }
            lines.append(
                "`\(SagaOperatorTool.toolName) resolve \(state.id) --reason …` records that you did the unfinished members' actions by hand (they will not run); the saga goes on after the group"
            )
            var next = NextStep(
                kind: "needs-operator", summary: lines[0], text: lines.joined(separator: "\n"), operatorCommands: commands, group: data)
            if let (member, attempt) = targets.first {
                next.command = definition.steps[member.step].action
                next.step = member.step
                next.stepName = member.name
                next.phase = StepPhase.action.rawValue
                next.attempt = attempt
            }
            return next
        }

        // Running: every running member's command is on its way, now or after a retry delay.
        let commands = SagaStateMachine(definition: definition).commands(for: state).map(\.command)
        var lines = [
            "waiting for \(commands.count) member(s) of parallel group '\(group.name)' to finish: "
                + commands.map { "'\($0.command)' attempt \($0.attempt)" }.joined(separator: ", ")
        ]
        var dues: [Date] = []
        var delaySeconds: Int?
        for command in commands {
            let member = "step \(command.step + 1) '\(command.stepName)'"
            let last = state.history.last { $0.step == command.step && $0.phase == .action }
            if let last, last.outcome == .retrying {
                let level = configuration.topology.delayLevel(
                    for: definition.steps[command.step].options.retry.delay(afterAttempt: last.attempt))
                let due = last.finishedAt.addingTimeInterval(Double(level))
                dues.append(due)
                delaySeconds = delaySeconds ?? level
                lines.append(
                    due > now
                        ? "\(member): retrying at \(isoFormatter.string(from: due)) (delay level \(level) s) as attempt \(command.attempt); the last attempt failed: \(last.error ?? "no error recorded")"
                        : "\(member): waiting for a service to run attempt \(command.attempt); the retry was due at \(isoFormatter.string(from: due)) (delay level \(level) s); the last attempt failed: \(last.error ?? "no error recorded")"
                )
            } else if let last, last.outcome == .retryRequested {
                lines.append(
                    "\(member): sent again at \(isoFormatter.string(from: last.finishedAt)) for \(last.actor ?? "an operator")'s retry")
            }
        }
        let settled = group.members.filter { if case .running = $0.progress { false } else { true } }
        if !settled.isEmpty { lines.append("settled: " + settled.map(\.text).joined(separator: ", ")) }
        lines.append(
            "sent to exchange \(exchange), routing key(s) " + commands.map { "'\($0.command)'" }.joined(separator: ", "))
        if forwardOnly {
            lines.append(
                "past the pivot: failing members are retried forward until they succeed; a member's refusal (failAndCompensate) makes the saga need an operator"
            )
        } else if !group.failed.isEmpty {
            lines.append("a member failed: once the running members finish, \(compensates)")
        } else {
            let left = commands.map { "\($0.stepName) \(max(0, definition.steps[$0.step].options.retry.maxAttempts - $0.attempt))" }
            lines.append(
                "the group joins when every member completed or was skipped; a member's business failure (failAndCompensate) or last failed retry (retries left: \(left.joined(separator: ", "))) makes the group wait for the running members, then \(compensates)"
            )
        }
        let stalledAt = state.updatedAt.addingTimeInterval(configuration.reaper.stalledThreshold.seconds)
        lines.append(
            "if nothing happens by \(isoFormatter.string(from: stalledAt)), the reaper re-sends the running members' commands (\(max(0, configuration.reaper.maxReapAttempts - state.reapAttempts)) re-send(s) left before the saga needs an operator)"
        )
        let waitingForRetries = !commands.isEmpty && dues.count == commands.count && dues.allSatisfy { $0 > now }
        var next = NextStep(
            kind: waitingForRetries ? "retrying" : "waiting", summary: lines[0], text: lines.joined(separator: "\n"), operatorCommands: [],
            group: data)
        if let first = commands.first {
            next.command = first.command
            next.step = first.step
            next.stepName = first.stepName
            next.phase = first.phase.rawValue
            next.attempt = first.attempt
        }
        next.retryAt = dues.min()
        next.delaySeconds = delaySeconds
        next.stalledAt = stalledAt
        return next
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text.padding(toLength: width, withPad: " ", startingAt: 0)
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var copy = self
        while copy.last == " " { copy.removeLast() }
        return copy
    }
}
