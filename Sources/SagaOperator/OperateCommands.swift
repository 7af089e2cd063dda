import ArgumentParser
import Foundation
import Participant

struct RetryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry",
        abstract: "Send a saga's current command again, as a new attempt (also for a saga that needs attention)."
    )

    @OptionGroup var connection: OperatorOptions

    @Argument(help: "The saga id.")
    var id: String

    @Flag(help: "Print JSON (the new state).")
    var json = false

    func run() async throws {
        let id = id
        let json = json
        try await CommandEnvironment(connection).withManager { manager in
            let state = try await manager.retry(id)
            if json { return try printJSON(state) }
            print("saga \(id) is \(state.status.cliName) at \(position(state)); its command was sent again.")
        }
    }
}

struct CompensateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compensate",
        abstract: "Compensate a saga now: undo its completed steps, newest first (only before the pivot)."
    )

    @OptionGroup var connection: OperatorOptions

    @Argument(help: "The saga id.")
    var id: String

    @Option(help: "Why, recorded as the saga's failure reason.")
    var reason = "compensation requested by an operator"

    @Flag(help: "Print JSON (the new state).")
    var json = false

    func run() async throws {
        let (id, reason) = (id, reason)
        let json = json
        try await CommandEnvironment(connection).withManager { manager in
            let state = try await manager.compensate(id, reason: reason)
            if json { return try printJSON(state) }
            print("saga \(id) is \(state.status.cliName) at \(position(state)).")
        }
    }
}

struct ReapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reap",
        abstract: "Run one reaper pass now: re-send the current command of stalled sagas.",
        discussion: "Safe while participants run their own reapers: sagas are claimed with a lease."
    )

    @OptionGroup var connection: OperatorOptions

    @Option(
        help:
            "A running or compensating saga not updated for this many seconds is stalled (default: SAGAKIT_REAPER_STALLED_SECONDS or 900).")
    var stalledSeconds: Int?

    @Option(help: "Re-sends without progress before the saga needs attention (default: SAGAKIT_REAPER_MAX_ATTEMPTS or 3).")
    var maxAttempts: Int?

    @Flag(help: "Print JSON (the sagas that changed).")
    var json = false

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
        let (changed, unknown, positions) = try await environment.withStoreAndBus { store, bus in
            // The compiled-in definitions and the store's.
            let definitions = SagaOperatorTool.definitions
            let changed = try await SagaReaper(
                configuration: reaper, definitions: definitions, bus: bus, store: store, topology: topology, logger: logger
            ).reapOnce()
            // The reaper leaves sagas whose definition it does not know alone: say so.
            let stalled = try await store.list(
                SagaQuery(
                    statuses: [.running, .compensating], updatedBefore: Date().addingTimeInterval(-reaper.stalledThreshold.seconds),
                    limit: 1000))
            let unknown = stalled.filter { definitions.definition(named: $0.name, version: $0.definitionVersion) == nil }
            return (changed, unknown, changed.map(position))
        }
        if json { return try printJSON(changed) }
        if !unknown.isEmpty {
            let names = Set(unknown.map(\.name)).sorted().joined(separator: ", ")
            FileHandle.standardError.write(
                Data(
                    "saga: \(unknown.count) stalled saga(s) of definitions neither this tool nor the store knows were left alone (\(names)); start a participant that runs them (it registers them in the store)\n"
                        .utf8))
        }
        if changed.isEmpty {
            print("no stalled sagas of known definitions re-sent (threshold \(Int(reaper.stalledThreshold.seconds)) s)")
            return
        }
        printTable(
            ["ID", "NAME", "NOW", "AT", "RE-SENDS"],
            zip(changed, positions).map { [$0.id, $0.name, $0.status.cliName, $1, "\($0.reapAttempts)"] })
    }
}
