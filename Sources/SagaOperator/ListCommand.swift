import ArgumentParser
import Foundation
import Participant
import SagaConsole

/// `saga list`: sagas matching filters the store applies (status, definition name and version,
/// stalled, stuck retrying), most recently updated first.
struct ListCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "list",
            abstract: "List sagas, most recently updated first.",
            discussion: """
                Filters combine (AND). Examples: \(SagaOperatorTool.toolName) list --status needs-attention · \(SagaOperatorTool.toolName) list --status waiting (sagas waiting for a signal) · \(SagaOperatorTool.toolName) list --stalled 300 · \
                \(SagaOperatorTool.toolName) list --name trip --version 2 · \(SagaOperatorTool.toolName) list --stuck-retrying (attempt ≥ 5) · \(SagaOperatorTool.toolName) list --stuck-retrying 3 --json. \
                JSON (--json): an array of saga states; see Docs/Operations.md.
                """
        )
    }

    /// The attempt from which `--stuck-retrying` given alone counts a saga as stuck.
    static let defaultStuckAttempts = 5

    @OptionGroup var connection: OperatorOptions

    @Option(
        name: .long, parsing: .upToNextOption,
        help: "Only these statuses: running, compensating, waiting, completed, compensated, needs-attention.")
    var status: [String] = []

    @Option(help: "Only sagas of this definition.")
    var name: String?

    @Option(help: "Only sagas pinned to this definition version.")
    var version: Int?

    @Option(
        help:
            "Only running or compensating sagas that made no progress for this many seconds (a reaper's re-send of their command is no progress)."
    )
    var stalled: Double?

    @Option(
        name: .customLong("stuck-retrying"),
        help: ArgumentHelp(
            "Only running or compensating sagas whose current step was attempted at least this many times (alone: 5), for example retrying forever past the pivot.",
            valueName: "attempts"))
    var stuckRetrying: Int?

    @Option(help: "At most this many sagas.")
    var limit = 50

    @Flag(
        name: .customLong("all-topologies"),
        help:
            "List the sagas of every topology in the store (default: those started on the topology of --prefix, and those that record none)."
    )
    var allTopologies = false

    @Flag(help: "Print JSON (an array of saga states).")
    var json = false

    @Flag(help: "Print only the ids, one per line (for `retry -`, `compensate -`, `resolve -`).")
    var ids = false

    func validate() throws {
        if json && ids { throw ValidationError("choose --json or --ids") }
        if let version, version < 1 { throw ValidationError("--version must be 1 or more") }
        if let stuckRetrying, stuckRetrying < 1 { throw ValidationError("--stuck-retrying must be 1 or more") }
        if let stalled, stalled < 0 { throw ValidationError("--stalled must be 0 or more seconds") }
        if limit < 1 { throw ValidationError("--limit must be 1 or more") }
    }

    /// The store query these options make, for the sagas of `topology` (every topology when
    /// `nil`).
    func query(now: Date = Date(), topology: String? = nil) throws -> SagaQuery {
        var statuses = try Set(status.flatMap { $0.split(separator: ",") }.map { try parseStatus(String($0)) })
        var updatedBefore: Date?
        if let stalled {
            updatedBefore = now.addingTimeInterval(-stalled)
        }
        if stalled != nil || stuckRetrying != nil {
            // Only a saga that still moves can be stalled or stuck retrying.
            statuses = statuses.isEmpty ? [.running, .compensating] : statuses.intersection([.running, .compensating])
            if statuses.isEmpty {
                throw ValidationError("--stalled and --stuck-retrying find running or compensating sagas; drop the other --status values")
            }
        }
        return SagaQuery(
            statuses: statuses.isEmpty ? nil : statuses, name: name, updatedBefore: updatedBefore, definitionVersion: version,
            minimumAttempt: stuckRetrying, topology: topology, limit: limit)
    }

    /// `--stuck-retrying` given without a number (last, or before another option) means
    /// ``defaultStuckAttempts``: ArgumentParser has no options with an optional value, so the
    /// arguments of `list` are completed before parsing.
    static func completingStuckRetrying(_ arguments: [String]) -> [String] {
        guard arguments.first == "list" else { return arguments }
        var result: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            result.append(argument)
            if argument == "--" {
                result.append(contentsOf: arguments[(index + 1)...])
                break
            }
            if argument == "--stuck-retrying" {
                let next = index + 1 < arguments.count ? arguments[index + 1] : nil
                if next.flatMap({ Int($0) }) == nil { result.append(String(defaultStuckAttempts)) }
            }
            index += 1
        }
        return result
    }

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let query = try query(topology: allTopologies ? nil : environment.configuration.topology.prefix)
        let (name, json, limit, idsOnly) = (name, json, limit, ids)
        let stalledSince = stalled.map { Date().addingTimeInterval(-$0) }
        try await environment.withStore { store in
            // Stalled: no progress since, which a reaper's re-send (an update) is not.
            func find(_ query: SagaQuery) async throws -> [SagaState] {
                if let stalledSince {
                    try await store.listStalled(query, noProgressSince: stalledSince)
                } else {
                    try await store.list(query)
                }
            }
            let sagas = try await find(query).map { environment.redactor.redact($0) }
            if json {
                try printJSON(sagas)
                return
            }
            if idsOnly {
                for saga in sagas { print(PrintableText.escaped(saga.id)) }
                // Said on standard error, so that a pipe gets ids only.
                if sagas.count == limit { printError("(\(limit) ids, the --limit; there may be more)") }
                return
            }
            let counts = try await Self.counts(in: store, name: name, topology: query.topology)
            try Self.report(sagas, counts: counts, query: query, limit: limit)
            if sagas.isEmpty, let topology = query.topology, counts.topology != nil {
                // Nothing on this topology: say so when other topologies have matching sagas.
                var anywhere = query
                anywhere.topology = nil
                anywhere.limit = 1
                if try await !find(anywhere).isEmpty {
                    print(
                        "(other topologies than '\(PrintableText.escaped(topology))' have matching sagas: use --all-topologies, or --prefix for theirs)"
                    )
                }
            }
        }
    }

    /// Counts by status for the topology; every topology's counts, saying so, when the store
    /// cannot count by topology.
    private static func counts(
        in store: any SagaStore, name: String?, topology: String?
    ) async throws -> (byStatus: [SagaStatus: Int], topology: String?) {
        do {
            return (try await store.countByStatus(name: name, topology: topology), topology)
        } catch let error as SagaError where error.code == .unsupported {
            return (try await store.countByStatus(name: name), nil)
        }
    }

    /// Prints inside the store's scope, so that positions use its definitions too.
    private static func report(
        _ sagas: [SagaState], counts: (byStatus: [SagaStatus: Int], topology: String?), query: SagaQuery, limit: Int
    ) throws {
        if sagas.isEmpty {
            print("no sagas match")
        } else {
            let now = Date()
            printTable(
                ["ID", "NAME", "VERSION", "STATUS", "AT", "STARTED", "UPDATED"],
                sagas.map {
                    [
                        $0.id, $0.name, "\($0.definitionVersion)", $0.status.cliName, $0.status.hasEnded ? "-" : position($0),
                        age($0.createdAt, now: now),
                        age($0.updatedAt, now: now),
                    ]
                }
            )
        }
        let totals = SagaStatus.allCases.map { "\($0.cliName) \(counts.byStatus[$0] ?? 0)" }.joined(separator: " · ")
        let scope = [
            query.name.map { PrintableText.escaped($0) },
            counts.topology.map { "topology \(PrintableText.escaped($0))" } ?? "every topology",
        ].compactMap { $0 }.joined(separator: ", ")
        print("\nin the store (\(scope)): \(totals)")
        if let attempts = query.minimumAttempt, !sagas.isEmpty {
            print(
                "stuck retrying (attempt \(attempts) or more): see why with `\(SagaOperatorTool.toolName) show <id>`; fix the handler, then `\(SagaOperatorTool.toolName) retry <id>`"
            )
        }
        if sagas.count == limit { print("(showing \(limit); use --limit for more)") }
    }
}
