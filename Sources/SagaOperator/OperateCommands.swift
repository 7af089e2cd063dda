import ArgumentParser
import Foundation
import Participant
import SagaConsole
import Synchronization

/// Who acts and why, for the commands that move a saga: recorded in the saga's history.
struct OperatorActionOptions: ParsableArguments, Sendable {
    @Option(help: "Who is acting, recorded in the saga's history (default: $SAGAKIT_OPERATOR, else $USER, else operator).")
    var by: String?

    /// The name recorded when `--by` is not given: `SAGAKIT_OPERATOR` (or its older name
    /// `SAGA_OPERATOR`), else `USER`, else `operator`.
    static func defaultActor(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        for key in ["SAGAKIT_OPERATOR", "SAGA_OPERATOR", "USER"] {
            if let value = environment[key]?.trimmingCharacters(in: .whitespaces), !value.isEmpty { return value }
        }
        return "operator"
    }

    /// `--by`, or the default.
    var actor: String { by.map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 } ?? Self.defaultActor() }
}

struct RetryCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "retry",
            abstract: "Send sagas' current commands again, as a new attempt (also for sagas that need attention).",
            discussion: severalSagasDiscussion(each: "retried", command: "retry")
        )
    }

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var action: OperatorActionOptions

    @Option(help: "Why, recorded in the saga's history.")
    var reason: String?

    @Option(
        help: ArgumentHelp(
            "Move the sagas' deadline to this many minutes from now (a saga past its deadline compensates when its command arrives).",
            valueName: "minutes"))
    var deadlineMinutes: Int?

    @Flag(help: "Remove the sagas' deadline.")
    var noDeadline = false

    @Argument(help: "The saga ids (one or more).")
    var ids: [String]

    @Flag(help: "Print JSON (the new saga state).")
    var json = false

    func validate() throws {
        if deadlineMinutes != nil, noDeadline { throw ValidationError("--deadline-minutes and --no-deadline exclude each other") }
        if let minutes = deadlineMinutes, minutes < 1 { throw ValidationError("--deadline-minutes must be at least 1, not \(minutes)") }
    }

    func run() async throws {
        let (actor, reason) = (action.actor, reason)
        let deadline: SagaDeadlineChange =
            noDeadline ? .remove : deadlineMinutes.map { .set(Date().addingTimeInterval(Double($0) * 60)) } ?? .keep
        let moved =
            switch deadline {
            case .keep: ""
            case .remove: "; deadline removed"
            case .set(let date): "; deadline moved to \(date.formatted(.iso8601))"
            }
        try await operateOnEach(
            ids, json: json, connection: connection,
            recorded: "retry requested by \(actor)\(reason.map { ": \"\($0)\"" } ?? " (no reason given)")\(moved)",
            then: "; its command was sent again"
        ) { try await $0.retry($1, by: actor, reason: reason, deadline: deadline) }
    }
}

/// The help of a command that acts on several sagas (`retry`, `compensate`).
func severalSagasDiscussion(each verb: String, command: String) -> String {
    """
    Recorded in each saga's history with --by and --reason (see `\(SagaOperatorTool.toolName) show`). Several ids: \
    each is \(verb), one failing does not stop the others, and the exit status is 1 when any failed. \
    The id - reads ids from standard input, one per line, e.g. \
    `\(SagaOperatorTool.toolName) list --status needs-attention --name order --ids | \(SagaOperatorTool.toolName) \(command) --reason "…" -`. \
    JSON (--json): the new saga state (an array of them for several ids).
    """
}

/// Runs an operator's action on each of `ids` with a saga manager (see ``forEachSaga``); for
/// people, prints each saga's new position (followed by `then`) and what its history recorded.
func operateOnEach(
    _ ids: [String], json: Bool, connection: OperatorOptions, recorded: String, then: String = "",
    _ action: @escaping @Sendable (SagaManager, String) async throws -> SagaState
) async throws {
    let environment = try CommandEnvironment(connection)
    let pastDeadline = Mutex(0)
    try await environment.withManager { manager in
        try await forEachSaga(ids, json: json, redactor: environment.redactor) { id in
            let state = try await action(manager, id)
            if !json {
                print("saga \(id) is \(state.status.cliName) at \(position(state))\(then).")
                print("recorded: \(recorded)")
            }
            // A running saga past its deadline (before its pivot) compensates when its command
            // arrives: say so, or an operator resuming sagas after an outage sees them compensate.
            if state.status == .running, let deadline = state.deadline, deadline < Date() {
                pastDeadline.withLock { $0 += 1 }
                printError(
                    "saga \(id): its deadline passed at \(deadline.formatted(.iso8601)): when its command arrives, it compensates (the definition's deadline applies until the pivot); to let it go on instead, retry it with --deadline-minutes N or --no-deadline at once"
                )
            }
            return state
        }
    }
    let late = pastDeadline.withLock { $0 }
    if late > 1 {
        printError(
            "\(late) of these sagas are past their deadline: they compensate instead of going on (retry them with --deadline-minutes N or --no-deadline to let them go on)"
        )
    }
}

/// How far a command acting on many sagas got: a line on standard error at each tenth of a run
/// of ``minimum`` ids or more (`retry -` with the ids of an outage's thousands of sagas), so that
/// the operator sees it moving and how many failed so far, even with `--json`.
struct BulkProgress {
    /// The smallest run that reports progress.
    static let minimum = 100
    let total: Int
    private var nextTenth = 1

    init(total: Int) { self.total = total }

    /// The line to print after `done` of the ids, `failed` of them failed; `nil` between tenths,
    /// at the end (the command's own summary follows) and for short runs.
    mutating func line(done: Int, failed: Int) -> String? {
        guard total >= Self.minimum, done < total, done * 10 >= nextTenth * total else { return nil }
        while done * 10 >= nextTenth * total { nextTenth += 1 }
        return "progress: \(done) of \(total) sagas (\(done * 100 / total) %)\(failed > 0 ? ", \(failed) failed" : "")"
    }
}

/// Runs `action` on each of `ids` in turn (a failure is reported and the next id goes on), prints
/// the states as JSON when asked (one object for one id, an array for several), and fails with
/// exit status 1 when any id failed.
func forEachSaga(_ ids: [String], json: Bool, redactor: Redactor, _ action: (String) async throws -> SagaState) async throws {
    let ids = try expandingStandardInput(ids)
    var states: [SagaState] = []
    var failures: [String] = []
    var progress = BulkProgress(total: ids.count)
    for (offset, id) in ids.enumerated() {
        do {
            states.append(redactor.redact(try await action(id)))
        } catch {
            if ids.count == 1 { throw error }
            failures.append(id)
            printError("saga \(id): \(error)")
        }
        if let line = progress.line(done: offset + 1, failed: failures.count) { printError(line) }
    }
    if json {
        if ids.count == 1, let state = states.first { try printJSON(state) } else { try printJSON(states) }
    }
    if !failures.isEmpty {
        printError("\(failures.count) of \(ids.count) failed: \(failures.joined(separator: ", "))")
        throw ExitCode(1)
    }
}

struct CompensateCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "compensate",
            abstract: "Compensate sagas now: undo their completed steps, newest first (only before the pivot).",
            discussion: severalSagasDiscussion(each: "compensated", command: "compensate")
        )
    }

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var action: OperatorActionOptions

    @Option(help: "Why, recorded in the saga's history and as its failure reason.")
    var reason = "compensation requested by an operator"

    @Argument(help: "The saga ids (one or more).")
    var ids: [String]

    @Flag(help: "Print JSON (the new saga state).")
    var json = false

    func run() async throws {
        let (actor, reason) = (action.actor, reason)
        try await operateOnEach(ids, json: json, connection: connection, recorded: "compensation requested by \(actor): \"\(reason)\"") {
            try await $0.compensate($1, by: actor, reason: reason)
        }
    }
}

struct StopCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "stop",
            abstract: "Stop running or compensating sagas where they are: they need attention, and their pending commands are ignored.",
            discussion: """
                For a step that will never succeed and is retried for ever (past the pivot): then `retry` once it can \
                succeed, `resolve` when you did it by hand, or `compensate` (before the pivot). A handler running at that \
                moment finishes and its report is discarded. \(severalSagasDiscussion(each: "stopped", command: "stop"))
                """
        )
    }

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var action: OperatorActionOptions

    @Option(help: "Why, recorded in the saga's history and as its failure reason (required).")
    var reason: String

    @Argument(help: "The saga ids (one or more).")
    var ids: [String]

    @Flag(help: "Print JSON (the new saga state).")
    var json = false

    func run() async throws {
        let (actor, reason) = (action.actor, reason)
        try await operateOnEach(ids, json: json, connection: connection, recorded: "stopped by \(actor): \"\(reason)\"") {
            try await $0.stop($1, by: actor, reason: reason)
        }
    }
}

struct ResolveCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "resolve",
            abstract: "Record that what sagas that need attention stopped at was done by hand, and let them go on.",
            discussion: """
                For a saga whose compensation keeps failing (you refunded by hand) the earlier compensations run next, then \
                it is compensated; for one stopped at an action past its pivot (you shipped by hand) its next step runs, or \
                it completes. --data is merged into the saga's data first. Only sagas that need attention: while a saga \
                runs, its handler may still report.
                """ + " " + severalSagasDiscussion(each: "resolved", command: "resolve")
        )
    }

    @OptionGroup var connection: OperatorOptions

    @OptionGroup var action: OperatorActionOptions

    @Option(help: "What was done by hand, recorded in the saga's history (required).")
    var reason: String

    @Option(help: "A JSON object merged into the saga's data (e.g. '{\"refundId\": \"R-17\"}').")
    var data: String?

    @Argument(help: "The saga ids (one or more).")
    var ids: [String]

    @Flag(help: "Print JSON (the new saga state).")
    var json = false

    func validate() throws {
        guard !reason.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ValidationError("--reason must say what was done by hand (it is recorded in the saga's history)")
        }
    }

    func run() async throws {
        let (ids, json, actor, reason) = (ids, json, action.actor, reason)
        let patch = try SignalCommand.payload(data)
        let environment = try CommandEnvironment(connection)
        try await environment.withManager { manager in
            try await forEachSaga(ids, json: json, redactor: environment.redactor) { id in
                let state = try await manager.resolve(id, by: actor, reason: reason, patch: patch)
                if !json {
                    let now = state.status.hasEnded ? "" : " at \(position(state))"
                    print("saga \(id) is \(state.status.cliName)\(now).")
                    print("recorded: resolved by hand by \(actor): \"\(reason)\"")
                }
                return state
            }
        }
    }
}

struct ReapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reap",
        abstract: "Run one reaper pass now: re-send the current command of stalled sagas.",
        discussion: """
            Safe while participants run their own reapers: sagas are claimed with a lease. Every stalled saga the pass \
            leaves alone is listed with the reason (another topology prefix, an unknown definition, a lease held by \
            another reaper, …). JSON (--json): {stalledSeconds, changed, leftAlone}; see Docs/Operations.md.
            """
    )

    @OptionGroup var connection: OperatorOptions

    @Option(
        help:
            "A running or compensating saga not updated for this many seconds is stalled (default: SAGAKIT_REAPER_STALLED_SECONDS or 900).")
    var stalledSeconds: Int?

    @Option(help: "Re-sends without progress before the saga needs attention (default: SAGAKIT_REAPER_MAX_ATTEMPTS or 3).")
    var maxAttempts: Int?

    @Flag(help: "Print JSON: the sagas the pass changed and those it left alone, with why.")
    var json = false

    /// A stalled saga the pass did not change, and why.
    struct LeftAlone: Encodable, Equatable {
        var id: String
        var name: String
        var definitionVersion: Int
        var status: String
        var updatedAt: Date
        /// `other-topology`, `unknown-definition`, `moved`, `lease-held`, `not-claimed`.
        var code: String
        /// Why, and what to do, for people.
        var reason: String
    }

    /// `saga reap --json`.
    struct Output: Encodable {
        /// The stalled threshold of the pass.
        var stalledSeconds: Int
        /// The sagas the pass changed (re-sent, compensated past their deadline, or stopped for an
        /// operator), as stored after the change.
        var changed: [SagaState]
        /// Every other saga that was stalled when the pass began.
        var leftAlone: [LeftAlone]
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let configuration = environment.configuration
        let logger = environment.logger
        var reaperConfiguration = configuration.reaper
        if let stalledSeconds { reaperConfiguration.stalledThreshold = .seconds(stalledSeconds) }
        if let maxAttempts { reaperConfiguration.maxReapAttempts = maxAttempts }
        reaperConfiguration.pollInterval = .seconds(60)
        let reaper = reaperConfiguration
        let topology = configuration.topology
        let (output, positions) = try await environment.withStoreAndBus { store, bus in
            // The compiled-in definitions and the store's.
            let definitions = SagaOperatorTool.definitions
            let now = Date()
            let cutoff = now.addingTimeInterval(-reaper.stalledThreshold.seconds)
            let stalled = try await store.list(SagaQuery(statuses: [.running, .compensating], updatedBefore: cutoff, limit: 10_000))
            let changed = try await SagaReaper(
                configuration: reaper, definitions: definitions, bus: bus, store: store, topology: topology, logger: logger
            ).reapOnce(now: now).map { environment.redactor.redact($0) }
            let leftAlone = try await Self.leftAlone(
                stalled: stalled, changed: changed, store: store, definitions: definitions, topology: topology,
                cutoff: cutoff, now: now, batchSize: reaper.batchSize)
            return (
                Output(stalledSeconds: Int(reaper.stalledThreshold.seconds), changed: changed, leftAlone: leftAlone), changed.map(position)
            )
        }
        if json { return try printJSON(output) }
        if output.changed.isEmpty {
            print("no stalled saga re-sent (threshold \(output.stalledSeconds) s)")
        } else {
            printTable(
                ["ID", "NAME", "NOW", "AT", "RE-SENDS"],
                zip(output.changed, positions).map { [$0.id, $0.name, $0.status.cliName, $1, "\($0.reapAttempts)"] })
        }
        if !output.leftAlone.isEmpty {
            print("\n\(output.leftAlone.count) stalled saga(s) left alone:")
            printTable(
                ["ID", "NAME", "STATUS", "UPDATED", "WHY"],
                output.leftAlone.map { [$0.id, "\($0.name) v\($0.definitionVersion)", $0.status, age($0.updatedAt), $0.reason] })
        }
    }

    /// Why each saga that was stalled when the pass began was not changed by it. The reaper skips
    /// sagas of another topology and of unknown definitions; a saga another reaper holds a lease
    /// on is not claimed. To tell a held lease from a free one, the free ones are claimed with a
    /// lease that ends at once (so nobody is kept from them).
    static func leftAlone(
        stalled: [SagaState], changed: [SagaState], store: any SagaStore, definitions: SagaDefinitionRegistry, topology: SagaTopology,
        cutoff: Date, now: Date, batchSize: Int
    ) async throws -> [LeftAlone] {
        let changedIDs = Set(changed.map(\.id))
        let candidates = stalled.filter { !changedIDs.contains($0.id) }
        guard !candidates.isEmpty else { return [] }
        let free = Set(
            try await store.claimStalled(
                updatedBefore: cutoff, now: now, owner: "saga-cli-probe", lease: .zero, limit: stalled.count + 1
            ).map(\.id))
        var result: [LeftAlone] = []
        for saga in candidates {
            func leave(_ code: String, _ reason: String) {
                result.append(
                    LeftAlone(
                        id: saga.id, name: saga.name, definitionVersion: saga.definitionVersion, status: saga.status.cliName,
                        updatedAt: saga.updatedAt, code: code, reason: reason))
            }
            if let prefix = saga.context[SagaTopology.contextKey], prefix != topology.prefix {
                leave(
                    "other-topology",
                    "started on topology prefix '\(prefix)', this tool uses '\(topology.prefix)': the reapers of that deployment handle it (or run `\(SagaOperatorTool.toolName) reap --prefix \(prefix)`)"
                )
                continue
            }
            if (try? definitions.definition(named: saga.name)) == nil {
                leave(
                    "unknown-definition",
                    "neither this tool nor the store knows the definition '\(saga.name)': start a participant that runs it (it registers it in the store)"
                )
                continue
            }
            let current = try? await store.load(saga.id)
            if let current, current.version != saga.version || current.status.isTerminal {
                leave(
                    "moved",
                    "it moved while the pass ran (now \(current.status.cliName) at \(position(current)), version \(current.version))")
                continue
            }
            if free.contains(saga.id) {
                leave(
                    "not-claimed",
                    "not reached by this pass (it claims at most \(batchSize) sagas, or re-sending failed: see the errors above); run `\(SagaOperatorTool.toolName) reap` again"
                )
            } else {
                leave(
                    "lease-held",
                    "another reaper holds its lease (it is handling it now, or this pass could not re-send it: see the errors above); left alone until the lease ends"
                )
            }
        }
        return result
    }
}

/// `ids` with `-` replaced by the ids on standard input (one per line; blank lines skipped).
/// - Throws: a validation error when `-` is given and standard input holds no id.
func expandingStandardInput(_ ids: [String]) throws -> [String] {
    guard ids.contains("-") else { return ids }
    var read: [String] = []
    while let line = readLine(strippingNewline: true) {
        let id = line.trimmingCharacters(in: .whitespaces)
        if !id.isEmpty { read.append(id) }
    }
    guard !read.isEmpty else {
        throw ValidationError("no saga ids on standard input (the id - reads them from there, one per line)")
    }
    return ids.flatMap { $0 == "-" ? read : [$0] }
}
