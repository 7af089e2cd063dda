import Foundation
import Participant
import PostgresNIO
import SagaPostgres
import SagaSQLite

/// What every process of one benchmark invocation shares.
struct Settings: Sendable {
    /// `postgres` or `sqlite`.
    var store: String
    /// The PostgreSQL store's URL.
    var postgresURL: String?
    /// The SQLite store's file.
    var sqlitePath: String
    /// The broker.
    var amqpURL: String
    /// The queue and exchange prefix of this invocation.
    var prefix: String
    /// Lifecycle events published (`all` or `outcomes`).
    var events: SagaLifecycleEvent.Selection
    /// Prefetch of each participant.
    var prefetch: Int
    /// Deliveries each participant processes at once (`nil`: the participant's default).
    var handlers: Int?
    /// `transaction` (the step's local write commits with the saga's transition, `LocalWrite`)
    /// or `separate` (its own transaction in the service's database, keyed by the step's
    /// idempotency key; then the transition) or `none` (no local write, for comparison).
    var local: String
    /// The database of the services' tables in the separate way (default: the store's).
    var localURL: String?
    /// A timeout on each step's action (`nil`: none).
    var stepTimeout: Duration?

    /// The topology every process uses.
    var topology: SagaTopology { SagaTopology(prefix: prefix, delayLevels: [1], events: events) }

    /// The URL of the services' tables (PostgreSQL).
    var tablesURL: String? { local == "separate" ? (localURL ?? postgresURL) : postgresURL }

    /// Runs `body` with the store open and running.
    func withStore<T: Sendable>(_ body: (any SagaStore) async throws -> T) async throws -> T {
        let logger = Logger(label: "system-benchmark.store")
        switch store {
        case "postgres":
            guard let postgresURL else { throw BenchmarkError("--store postgres needs --postgres-url or POSTGRES_URL") }
            let store = try PostgresSagaStore(url: postgresURL, logger: logger)
            return try await store.withRunning { try await body($0) }
        default:
            let store = SQLiteSagaStore(path: sqlitePath, logger: logger)
            return try await store.withRunning { try await body($0) }
        }
    }
}

/// One participant process: its handlers, each step one write to the service's own table.
enum ParticipantRole {
    /// Runs the participant of `role` until the starter closes this process's standard input.
    static func run(role: String, settings: Settings) async throws {
        let logger = Logger(label: "system-benchmark.\(role)")
        exitWhenStandardInputCloses()
        try await settings.withStore { store in
            let separate: TableAccess? =
                if settings.local == "separate", let url = settings.tablesURL { try TableAccess.postgres(url: url) } else { nil }
            var client: PostgresClient?
            if case .postgres(let pg) = separate { client = pg }
            let handlers = makeHandlers(role: role, separate: client, noWrites: settings.local == "none")
            let bus = try await RabbitMQBus.connect(url: settings.amqpURL)
            var configuration = ParticipantConfiguration(
                service: role, topology: settings.topology, prefetch: settings.prefetch, reaper: nil)
            if let handlers = settings.handlers { configuration.maxConcurrentHandlers = handlers }
            let participant = SagaParticipant(
                configuration: configuration,
                definitions: BenchSaga.definitions(stepTimeout: settings.stepTimeout), handlers: handlers, bus: bus, store: store,
                logger: logger)
            say("READY \(role)")
            if let separate {
                try await separate.withRunning { try await participant.run() }
            } else {
                try await participant.run()
            }
        }
    }

    /// The handlers of `role`; `separate` set: each write in its own transaction first; `noWrites`: none.
    static func makeHandlers(role: String, separate: PostgresClient?, noWrites: Bool) -> SagaHandlerRegistry {
        let logger = Logger(label: "system-benchmark.\(role).local")
        /// Reports an action with its write.
        @Sendable func complete(_ context: SagaContext, _ effect: Effect) async throws {
            if let separate {
                try await effect.apply(on: separate, key: context.idempotencyKey, logger: logger)
                try await context.completeStep()
            } else if noWrites {
                try await context.completeStep()
            } else {
                try await context.completeStep(merging: [:], writing: [effect.localWrite])
            }
        }
        /// Reports a compensation with its write.
        @Sendable func compensate(_ context: SagaContext, _ effect: Effect) async throws {
            if let separate {
                try await effect.apply(on: separate, key: context.idempotencyKey, logger: logger)
                try await context.completeCompensation()
            } else if noWrites {
                try await context.completeCompensation()
            } else {
                try await context.completeCompensation(writing: [effect.localWrite])
            }
        }
        var registry = SagaHandlerRegistry()
        switch role {
        case "inventory":
            registry.register("inventory.reserve") { context in
                let order = try context.payload(as: BenchOrder.self)
                try await complete(context, .reserve(sku: order.sku, qty: order.qty))
            }
            registry.register("inventory.release") { context in
                let order = try context.payload(as: BenchOrder.self)
                try await compensate(context, .release(sku: order.sku, qty: order.qty))
            }
        case "payment":
            registry.register("payment.charge") { context in
                let order = try context.payload(as: BenchOrder.self)
                try await complete(context, .charge(account: order.account, amount: order.amount))
            }
            registry.register("payment.refund") { context in
                let order = try context.payload(as: BenchOrder.self)
                try await compensate(context, .refund(account: order.account, amount: order.amount))
            }
        default:
            registry.register("shipping.ship") { context in
                let order = try context.payload(as: BenchOrder.self)
                if order.fail {
                    try await context.failAndCompensate(reason: "declined")
                } else {
                    try await complete(context, .ship(lane: order.lane))
                }
            }
        }
        return registry
    }

    /// Ends the process when its standard input reaches end of file: the starter closes it when
    /// it is done, and the kernel closes it when the starter dies.
    static func exitWhenStandardInputCloses() {
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 256)
            while read(0, &buffer, buffer.count) > 0 {}
            exit(0)
        }
    }
}
