import ArgumentParser
import Foundation
import Participant

/// `saga events`: the sagas' lifecycle events as they happen.
struct EventsCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "events",
            abstract: "Print saga lifecycle events as they are published (started, step completed/failed, compensated, …).",
            discussion: """
                Subscribes to the topology's events exchange with a private queue (gone when the command ends) and prints one \
                line per event, or one JSON object per line with --json. Only events published while it runs are seen: the \
                store (`\(SagaOperatorTool.toolName) show`) has the state. Examples: \(SagaOperatorTool.toolName) events --follow · \(SagaOperatorTool.toolName) events --follow --name order --kind \
                needs-attention · \(SagaOperatorTool.toolName) events --saga <id> --until-terminal · \(SagaOperatorTool.toolName) events --count 10 --json
                """
        )
    }

    @OptionGroup var connection: OperatorOptions

    @Flag(help: "Keep printing until interrupted (Ctrl-C).")
    var follow = false

    @Option(help: "Stop after this many events.")
    var count: Int?

    @Option(help: "Stop after this many seconds.")
    var timeout: Double?

    @Option(help: "Only events of this definition.")
    var name: String?

    @Option(
        name: .long, parsing: .upToNextOption,
        help: "Only these kinds: \(SagaLifecycleEvent.Kind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var kind: [String] = []

    @Option(help: "Only events of this saga.")
    var saga: String?

    @Flag(help: "With --saga: stop after the saga's terminal event (completed, compensated, needs-attention).")
    var untilTerminal = false

    @Flag(help: "Print one JSON object per line (JSON Lines), as in Docs/schemas/saga-event.schema.json.")
    var json = false

    func validate() throws {
        guard follow || count != nil || timeout != nil || untilTerminal else {
            throw ValidationError("say how long to listen: --follow, --count N, --timeout SECONDS or --saga ID --until-terminal")
        }
        if untilTerminal && saga == nil { throw ValidationError("--until-terminal needs --saga ID") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        for kind in kinds where SagaLifecycleEvent.Kind(rawValue: kind) == nil {
            throw ValidationError(
                "unknown event kind '\(kind)'; kinds: \(SagaLifecycleEvent.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    private var kinds: [String] { kind.flatMap { $0.split(separator: ",").map(String.init) } }

    /// The binding keys on `<prefix>.events`: `<definition or *>.<kind or *>`, `#` for all.
    var bindingKeys: [String] {
        let definition = name ?? "*"
        if kinds.isEmpty { return [name.map { "\($0).#" } ?? "#"] }
        return kinds.map { "\(definition).\($0)" }
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let topology = environment.configuration.topology
        let keys = bindingKeys
        let limit = count
        let sagaID = saga
        let stopAtTerminal = untilTerminal
        let json = json
        let deadline = timeout.map { ContinuousClock.now.advanced(by: .milliseconds(Int64($0 * 1000))) }
        let printed = try await environment.withBus { bus in
            let events = try await SagaEventSubscription.subscribe(
                bus: bus, topology: topology, bindingKeys: keys, logger: environment.logger)
            FileHandle.standardError.write(
                Data("\(SagaOperatorTool.toolName): listening on \(topology.eventsExchange) (\(keys.joined(separator: ", ")))\n".utf8))
            return try await Self.print(
                events, sagaID: sagaID, limit: limit, stopAtTerminal: stopAtTerminal, deadline: deadline, json: json)
        }
        if let limit, printed < limit {
            throw CommandFailure("saw \(printed) of \(limit) event(s) before the time ran out")
        }
    }

    /// Prints events until the limit, the saga's terminal event or the deadline; returns how many
    /// it printed.
    static func print(
        _ events: SagaEventSubscription, sagaID: String?, limit: Int?, stopAtTerminal: Bool, deadline: ContinuousClock.Instant?,
        json: Bool
    ) async throws -> Int {
        try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask {
                var printed = 0
                for try await event in events {
                    if let sagaID, event.sagaID != sagaID { continue }
                    // Unbuffered: a pipe reader sees each event as it happens.
                    FileHandle.standardOutput.write(Data(((json ? try line(json: event) : line(text: event)) + "\n").utf8))
                    printed += 1
                    if let limit, printed >= limit { break }
                    if stopAtTerminal && event.kind.isTerminal { break }
                }
                return printed
            }
            if let deadline {
                group.addTask {
                    try await Task.sleep(until: deadline)
                    return nil
                }
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            // The deadline came first: the printing task's count is what it printed.
            if let first { return first }
            return try await group.next().flatMap { $0 } ?? 0
        }
    }

    static func line(json event: SagaLifecycleEvent) throws -> String {
        String(decoding: try JSONCoding.encode(event), as: UTF8.self)
    }

    /// `10:41:07.316  order  8c0e…  step-failed   charge-card #1: card declined (no retry)`;
    /// `… waiting  fraud-review #1: waits for signal 'fraud.approved' until …`;
    /// `… step-completed  fraud-review #1  by alice: signal 'fraud.approved'`.
    static func line(text event: SagaLifecycleEvent) -> String {
        var text =
            "\(event.at.formatted(timeFormat))  \(event.sagaName) v\(event.definitionVersion)  \(event.sagaID)  \(event.kind.rawValue)"
        if let step = event.stepName ?? event.step.map(String.init) {
            text += "  \(step)"
            if let phase = event.phase, phase == .compensation { text += " (compensation)" }
            if let attempt = event.attempt { text += " #\(attempt)" }
        }
        if let action = event.action {
            text += "  \(action) by \(event.actor ?? "?")"
            if let reason = event.reason { text += ": \(reason)" }
        } else if let reason = event.reason {
            // A signal (who sent it), a wait (the signal and until when), a skipped step (why).
            text += event.actor.map { "  by \($0): \(reason)" } ?? ": \(reason)"
        }
        if let error = event.error { text += ": \(error)" }
        if let willRetry = event.willRetry { text += willRetry ? " (will retry)" : " (no retry)" }
        return text
    }

    private static let timeFormat = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
}
