import ArgumentParser
import Foundation
import Participant

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List sagas, most recently updated first.",
        discussion: "Examples: saga list --status needs-attention · saga list --stalled 300 · saga list --name order --json"
    )

    @OptionGroup var connection: OperatorOptions

    @Option(
        name: .long, parsing: .upToNextOption, help: "Only these statuses: running, compensating, completed, compensated, needs-attention.")
    var status: [String] = []

    @Option(help: "Only sagas of this definition.")
    var name: String?

    @Option(help: "Only running or compensating sagas not updated for this many seconds.")
    var stalled: Double?

    @Option(help: "At most this many sagas.")
    var limit = 50

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        var statuses = try Set(status.flatMap { $0.split(separator: ",") }.map { try parseStatus(String($0)) })
        var updatedBefore: Date?
        if let stalled {
            updatedBefore = Date().addingTimeInterval(-stalled)
            if statuses.isEmpty { statuses = [.running, .compensating] }
        }
        let query = SagaQuery(statuses: statuses.isEmpty ? nil : statuses, name: name, updatedBefore: updatedBefore, limit: limit)
        let name = name
        let json = json
        let limit = limit
        try await environment.withStore { store in
            let (sagas, counts) = (try await store.list(query), try await store.countByStatus(name: name))
            try Self.report(sagas, counts: counts, name: name, json: json, limit: limit)
        }
    }

    /// Prints inside the store's scope, so that positions use its definitions too.
    private static func report(_ sagas: [SagaState], counts: [SagaStatus: Int], name: String?, json: Bool, limit: Int) throws {
        if json {
            try printJSON(sagas)
            return
        }
        if sagas.isEmpty {
            print("no sagas match")
        } else {
            let now = Date()
            printTable(
                ["ID", "NAME", "STATUS", "AT", "STARTED", "UPDATED"],
                sagas.map { [$0.id, $0.name, $0.status.cliName, position($0), age($0.createdAt, now: now), age($0.updatedAt, now: now)] }
            )
        }
        let totals = SagaStatus.allCases.map { "\($0.cliName) \(counts[$0] ?? 0)" }.joined(separator: " · ")
        print("\nin the store\(name.map { " (\($0))" } ?? ""): \(totals)")
        if sagas.count == limit { print("(showing \(limit); use --limit for more)") }
    }
}
