import ArgumentParser
import Foundation
import Participant
import SagaKitApp

struct RetryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry",
        abstract: "Send a saga's current command again, as a new attempt (also for a saga that needs attention)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The saga id.")
    var id: String

    @Flag(help: "Print JSON (the new state).")
    var json = false

    func run() async throws {
        let id = id
        let state = try await CommandEnvironment(connection).withManager { try await $0.retry(id) }
        if json { return try printJSON(state) }
        print("saga \(id) is \(state.status.cliName) at \(position(state)); its command was sent again.")
    }
}

struct CompensateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compensate",
        abstract: "Compensate a saga now: undo its completed steps, newest first (only before the pivot)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The saga id.")
    var id: String

    @Option(help: "Why, recorded as the saga's failure reason.")
    var reason = "compensation requested by an operator"

    @Flag(help: "Print JSON (the new state).")
    var json = false

    func run() async throws {
        let (id, reason) = (id, reason)
        let state = try await CommandEnvironment(connection).withManager { try await $0.compensate(id, reason: reason) }
        if json { return try printJSON(state) }
        print("saga \(id) is \(state.status.cliName) at \(position(state)).")
    }
}

struct ReapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reap",
        abstract: "Run one reaper pass now: re-send the current command of stalled sagas.",
        discussion: "Safe while participants run their own reapers: sagas are claimed with a lease."
    )

    @OptionGroup var connection: ConnectionOptions

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
        let changed = try await environment.withStoreAndBus { store, bus in
            try await SagaReaper(
                configuration: reaper, definitions: OrderSaga.definitions, bus: bus, store: store, topology: configuration.topology,
                logger: logger
            ).reapOnce()
        }
        if json { return try printJSON(changed) }
        if changed.isEmpty {
            print("no stalled sagas (threshold \(Int(reaper.stalledThreshold.seconds)) s)")
            return
        }
        printTable(
            ["ID", "NAME", "NOW", "AT", "RE-SENDS"],
            changed.map { [$0.id, $0.name, $0.status.cliName, position($0), "\($0.reapAttempts)"] })
    }
}
