import ArgumentParser
import Foundation
import Participant

/// `saga purge`: deletes finished sagas older than a number of days, so that the store does not
/// keep every saga for ever.
struct PurgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge",
        abstract: "Delete finished sagas (completed or compensated) last updated more than N days ago.",
        discussion: """
            Keeps every saga that is running, waiting, compensating or needs attention, and a finished one whose last \
            message (its lifecycle event) is not sent yet. A deleted saga's id is free again: starting a saga with that id \
            starts a new one, so keep finished sagas for as long as a start may be repeated. Deletes in batches of 1,000, \
            saying how far it got on standard error; --dry-run counts instead.
            """
    )

    @OptionGroup var connection: OperatorOptions

    @Option(help: "Delete sagas whose last change is more than this many days old (fractions allowed, e.g. 0.5).")
    var olderThanDays: Double

    @Option(help: "Delete at most this many sagas.")
    var limit = 1_000_000

    @Flag(help: "Sagas of every topology in the store, not only those of this prefix (and those that name none).")
    var allTopologies = false

    @Flag(help: "Count the finished sagas old enough to delete (up to --limit), and delete nothing.")
    var dryRun = false

    @Flag(help: "Print JSON: {deleted or wouldDelete, finishedBefore, topology}.")
    var json = false

    func validate() throws {
        guard olderThanDays > 0, olderThanDays.isFinite else {
            throw ValidationError("--older-than-days must be a positive number of days")
        }
        guard limit > 0 else { throw ValidationError("--limit must be positive") }
    }

    /// `saga purge --json`.
    struct Output: Encodable {
        var deleted: Int?
        var wouldDelete: Int?
        var finishedBefore: Date
        /// The topology prefix; `nil` with `--all-topologies`.
        var topology: String?
    }

    /// The most sagas one statement deletes (a long purge is many short transactions).
    static let batchSize = 1_000

    func run() async throws {
        let environment = try CommandEnvironment(connection)
        let before = Date().addingTimeInterval(-olderThanDays * 86_400)
        let topology = allTopologies ? nil : environment.configuration.topology.prefix
        let (limit, dryRun, json) = (limit, dryRun, json)
        let count = try await environment.withStore { store in
            if dryRun {
                let query = SagaQuery(statuses: [.completed, .compensated], updatedBefore: before, topology: topology, limit: limit)
                return try await store.list(query).count
            }
            var deleted = 0
            while deleted < limit {
                let batch = try await store.purgeFinished(before: before, topology: topology, limit: min(Self.batchSize, limit - deleted))
                deleted += batch
                guard batch == Self.batchSize else { break }
                if !json { printError("… \(deleted) deleted so far") }
            }
            return deleted
        }
        if json {
            return try printJSON(
                Output(deleted: dryRun ? nil : count, wouldDelete: dryRun ? count : nil, finishedBefore: before, topology: topology))
        }
        let scope = topology.map { "of topology prefix '\($0)' (and sagas that name none)" } ?? "of every topology"
        let when = before.formatted(.iso8601)
        if dryRun {
            print(
                "would delete \(count)\(count == limit ? "+" : "") finished saga(s) \(scope) last updated before \(when) (fewer if some still have a message to send)"
            )
        } else {
            print("deleted \(count) finished saga(s) \(scope) last updated before \(when)")
        }
    }
}
