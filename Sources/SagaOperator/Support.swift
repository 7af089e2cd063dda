import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// What every subcommand needs: the configuration, a logger, and JSON output.
struct CommandEnvironment: Sendable {
    let configuration: OperatorConfiguration
    let logger: Logger
    /// Masks the payload keys the operator asked to hide (`--redact`, `SAGAKIT_REDACT`), and keys
    /// that look secret unless `SAGAKIT_REDACT_DEFAULTS=false`, wherever a command prints a
    /// payload, a context or a message body.
    let redactor: Redactor

    init(_ options: OperatorOptions, defaultLogLevel: Logger.Level = .error) throws {
        let configuration = try options.configuration(defaultLogLevel: defaultLogLevel)
        for line in options.passwordWarnings {
            FileHandle.standardError.write(Data("\(SagaOperatorTool.toolName): \(line)\n".utf8))
        }
        ConsoleLogHandler.bootstrapOnce(level: configuration.logLevel)
        self.configuration = configuration
        self.logger = Logger(label: "saga")
        self.redactor = Redactor(
            keys: configuration.redactedKeys, masksSecretLookingKeys: configuration.redactsSecretLookingKeys)
    }

    /// The definitions this tool knows: those compiled in by whoever built it and, while
    /// ``withStore(_:)`` runs its body, every definition the store keeps.
    var definitions: SagaDefinitionRegistry { SagaOperatorTool.definitions }

    /// Runs `body` with the store open and the store's definitions known (see
    /// ``definitions``). Says on standard error which store it opened.
    func withStore<T: Sendable>(_ body: @Sendable (any SagaStore) async throws -> T) async throws -> T {
        let url = try configuration.requireStoreURL()
        let described = OperatorStore.describe(url: url, reader: configuration.storeReader)
        FileHandle.standardError.write(Data("\(SagaOperatorTool.toolName): store \(described)\n".utf8))
        let logger = logger
        return try await OperatorStore.withStore(url: url, reader: configuration.storeReader, logger: logger) { store in
            let known = try await Self.definitions(SagaOperatorTool.definitions, and: store, logger: logger)
            return try await SagaOperatorTool.$definitions.withValue(known) { try await body(store) }
        }
    }

    /// The compiled-in definitions plus every name and version the store keeps that they lack
    /// (a compiled-in definition wins over a stored one of the same name and version).
    static func definitions(
        _ compiled: SagaDefinitionRegistry, and store: any SagaStore, logger: Logger
    ) async throws -> SagaDefinitionRegistry {
        let stored: [StoredDefinitionInfo]
        do {
            stored = try await store.definitions()
        } catch let error as SagaError where error.code == .unsupported {
            return compiled
        }
        var known = compiled
        for info in stored where compiled.definition(named: info.name, version: info.version) == nil {
            do {
                try known.register(try await store.definition(named: info.name, version: info.version))
            } catch let error as SagaError where error.code == .invalidDefinition {
                logger.warning(
                    "skipping a stored saga definition this tool cannot read",
                    metadata: ["saga.name": "\(info.name)", "definition.version": "\(info.version)", "error": "\(error)"])
            }
        }
        return known
    }

    /// Runs `body` with the store open and the broker connected.
    func withStoreAndBus<T: Sendable>(_ body: @Sendable (any SagaStore, RabbitMQBus) async throws -> T) async throws -> T {
        try await withStore { store in try await withBus { bus in try await body(store, bus) } }
    }

    /// Runs `body` with a saga manager on the store and the broker (for commands that move a
    /// saga).
    func withManager<T: Sendable>(_ body: @Sendable (SagaManager) async throws -> T) async throws -> T {
        let topology = configuration.topology
        let logger = logger
        return try await withStoreAndBus { store, bus in
            try await body(
                SagaManager(definitions: SagaOperatorTool.definitions, bus: bus, store: store, topology: topology, logger: logger))
        }
    }

    /// Runs `body` with the broker connected (one attempt: a command fails fast when the broker
    /// is down).
    func withBus<T: Sendable>(_ body: @Sendable (RabbitMQBus) async throws -> T) async throws -> T {
        // Read as the services read it: the URL (a local broker as guest by default) and every
        // other `amqp.*` setting, such as TLS files and timeouts.
        var rabbit = try RabbitMQConfiguration(reader: configuration.amqpReader)
        rabbit.connectionName = "saga CLI"
        rabbit.logger = logger
        let bus = try await RabbitMQBus.connect(rabbit)
        do {
            let result = try await body(bus)
            await bus.shutdown()
            return result
        } catch {
            await bus.shutdown()
            throw error
        }
    }
}

/// Prints a line to standard error (control characters escaped: it may quote a saga's text).
func printError(_ line: String) {
    FileHandle.standardError.write(Data((PrintableText.escaped(line) + "\n").utf8))
}

/// Prints a value as pretty JSON (dates in ISO 8601).
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .custom { date, encoder in
        var container = encoder.singleValueContainer()
        try container.encode(isoFormatter.string(from: date))
    }
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    print(tableText(header, rows))
}

/// Rows as aligned columns, one line each, the header first.
func tableText(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for row in rows {
        for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    return ([header] + rows).map(line).joined(separator: "\n")
}

/// ISO 8601 with milliseconds, in UTC (`2026-11-29T10:42:51.747Z`). A `Sendable` format style:
/// no shared formatter object between tasks.
let isoFormatter = ISOTimestamp()

/// Formats dates as ISO 8601 with milliseconds, in UTC.
struct ISOTimestamp: Sendable {
    private let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

    /// `date` as `2026-11-29T10:42:51.747Z`.
    func string(from date: Date) -> String { style.format(date) }
}

/// The definition a saga is pinned to (its name and version), if this tool or its store knows it.
func pinnedDefinition(of state: SagaState) -> SagaDefinition? {
    SagaOperatorTool.definitions.definition(named: state.name, version: state.definitionVersion)
}

/// A saga's current position in words: `charge-card (action #2)`, or for a saga in a parallel
/// group `parallel group 'prepare': reserve-stock completed, authorize-payment running (attempt 2)`;
/// for a waiting saga `step 2 'fraud-review' for signal 'fraud.approved' until … (in 23 h 59 min)`.
func position(_ state: SagaState) -> String {
    guard let definition = pinnedDefinition(of: state),
        definition.steps.indices.contains(state.currentStep)
    else {
        return "step \(state.currentStep + 1) (\(state.phase.rawValue) #\(state.attempt))"
    }
    if let group = GroupProgress(state, definition: definition) { return group.text }
    if let wait = WaitProgress(state, definition: definition) { return wait.text(now: Date()) }
    let phase = SagaStateMachine(definition: definition).phase(of: state)
    return "\(definition.steps[state.currentStep].name) (\(phase.rawValue) #\(state.attempt))"
}

/// Where the members of the parallel group a saga is in stand, read from its history with
/// ``SagaStateMachine/progress(of:in:)``. A saga is in a group while it runs the group (its
/// current step is the group's first) and when it stopped there for an operator before
/// compensating anything.
struct GroupProgress {
    /// One member.
    struct Member {
        var step: Int
        var name: String
        var progress: ParallelMemberProgress

        /// `reserve-stock completed`, `authorize-payment running (attempt 2)`.
        var text: String { "\(name) \(GroupProgress.describe(progress))" }

        /// As ``text``, for a saga stopped for an operator: a member without an outcome is
        /// `unfinished (attempt 2)`, not running.
        var stoppedText: String {
            if case .running(let attempt) = progress { return "\(name) unfinished (attempt \(attempt))" }
            return text
        }
    }

    var name: String
    var steps: ClosedRange<Int>
    var members: [Member]

    /// `nil` when the saga is not in a parallel group.
    init?(_ state: SagaState, definition: SagaDefinition) {
        let machine = SagaStateMachine(definition: definition)
        guard let range = machine.parallelGroup(of: state) else { return nil }
        stopped = state.status == .needsAttention
        name = definition.steps[range.lowerBound].group ?? ""
        steps = range
        members = range.map { Member(step: $0, name: definition.steps[$0].name, progress: machine.progress(of: $0, in: state)) }
    }

    /// `parallel group 'prepare': reserve-stock completed, authorize-payment running (attempt 2)`.
    var text: String {
        "parallel group '\(name)': " + members.map { stopped ? $0.stoppedText : $0.text }.joined(separator: ", ")
    }

    /// Whether the saga stopped in the group for an operator.
    var stopped: Bool

    /// The members still running.
    var running: [Member] { members.filter { if case .running = $0.progress { true } else { false } } }

    /// The members that failed for good.
    var failed: [Member] { members.filter { if case .failed = $0.progress { true } else { false } } }

    /// A member's progress in words (``ParallelMemberProgress/description``).
    static func describe(_ progress: ParallelMemberProgress) -> String { progress.description }

    /// The progress as a word for JSON: `running`, `completed`, `failed`, `skipped`.
    static func word(_ progress: ParallelMemberProgress) -> String {
        switch progress {
        case .running: "running"
        case .completed: "completed"
        case .failed: "failed"
        case .skipped: "skipped"
        }
    }
}

/// Parses `running`, `needs-attention`, `needsAttention`, `needs_attention`…
func parseStatus(_ text: String) throws -> SagaStatus {
    let wanted = text.lowercased().replacingOccurrences(of: "-", with: "").replacingOccurrences(of: "_", with: "")
    guard let status = SagaStatus.allCases.first(where: { $0.rawValue.lowercased() == wanted }) else {
        throw ValidationError("unknown status '\(text)'; use one of \(SagaStatus.allCases.map(\.cliName).joined(separator: ", "))")
    }
    return status
}

extension SagaStatus {
    /// The status as the CLI prints it: `needs-attention`.
    var cliName: String { self == .needsAttention ? "needs-attention" : rawValue }
}

/// An error message for people, and exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Formats a duration in seconds for people: `850 µs`, `35 ms`, `1.24 s`, `2 min 5 s`.
func formatSeconds(_ seconds: Double) -> String {
    switch seconds {
    case ..<0.001: String(format: "%.0f µs", seconds * 1_000_000)
    case ..<0.01: String(format: "%.1f ms", seconds * 1000)
    case ..<1: String(format: "%.0f ms", seconds * 1000)
    case ..<120: String(format: "%.2f s", seconds)
    default: "\(Int(seconds) / 60) min \(Int(seconds) % 60) s"
    }
}

/// A duration for people, in its two largest units: `45 s`, `1 min 30 s`, `5 min`, `24 h`,
/// `23 h 59 min`, `3 d 4 h` (days from 2 days on); below a second, `less than 1 s`.
func humanDuration(_ seconds: Double) -> String {
    guard seconds >= 1 else { return "less than 1 s" }
    let total = Int(seconds.rounded(.down))
    let days = total >= 172_800 ? total / 86_400 : 0
    let rest = total - days * 86_400
    let parts = [(days, "d"), (rest / 3600, "h"), (rest % 3600 / 60, "min"), (rest % 60, "s")]
    let first = parts.firstIndex { $0.0 > 0 } ?? 3
    return parts[first...].prefix(2).filter { $0.0 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: " ")
}

/// An instant as ISO 8601 without fractional seconds, in UTC (`2026-11-30T12:00:00Z`).
func isoSeconds(_ date: Date) -> String { date.formatted(.iso8601) }

/// Where a waiting saga waits: its wait step, the signal, and until when.
struct WaitProgress {
    /// The wait step's index.
    var step: Int
    /// The wait step's name.
    var stepName: String
    /// The wait.
    var wait: SagaWait
    /// When the wait times out (the reaper ends it at its first pass after that).
    var until: Date

    /// `nil` when the saga is not waiting at a wait step of its definition.
    init?(_ state: SagaState, definition: SagaDefinition) {
        guard let (step, wait, until) = SagaStateMachine(definition: definition).waiting(state) else { return nil }
        self.step = step
        stepName = definition.steps[step].name
        self.wait = wait
        self.until = until
    }

    /// `in 23 h 59 min`, or `overdue by 2 min` once the timeout passed.
    func remaining(now: Date) -> String {
        let left = until.timeIntervalSince(now)
        return left >= 0 ? "in \(humanDuration(left))" : "overdue by \(humanDuration(-left))"
    }

    /// `step 2 'fraud-review' for signal 'fraud.approved' until 2026-11-30T12:00:00Z (in 23 h 59 min)`.
    func text(now: Date) -> String {
        "step \(step + 1) '\(stepName)' for signal '\(wait.signal)' until \(isoSeconds(until)) (\(remaining(now: now)))"
    }
}
