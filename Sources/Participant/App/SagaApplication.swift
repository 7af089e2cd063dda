public import Configuration
import Foundation
import Synchronization

/// One service's process: its configuration, logging, the RabbitMQ bus, and a `ServiceGroup`
/// that runs the store, the bus and the participant, and shuts them down gracefully on SIGTERM
/// or SIGINT.
///
/// A complete participant:
///
/// ```swift
/// import Participant
/// import SagaPostgres
///
/// @main struct PaymentService {
///     static func main() async {
///         await SagaApplication.exitOnFailure {
///             let app = try SagaApplication(service: "payment", definitions: [TripSaga.definition])
///             var handlers = SagaHandlerRegistry()
///             handlers.register("payment.charge") { try await $0.completeStep() }
///             handlers.register("payment.refund") { try await $0.completeCompensation() }
///             try await app.runParticipant(handlers: handlers, store: PostgresSagaStore(reader: app.config.scoped(to: "postgres")))
///         }
///     }
/// }
/// ```
///
/// ## Configuration
/// Read through apple/swift-configuration; by default from the environment (`config` can be any
/// `ConfigReader`: files, flags, in-memory values in tests):
///
/// | key | environment | default |
/// |---|---|---|
/// | `amqp.url` | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2F` |
/// | `amqp.*` | `AMQP_*` | see `RabbitMQConfiguration(reader:)` |
/// | `sagakit.prefix` | `SAGAKIT_PREFIX` | `sagakit` |
/// | `sagakit.queue.kind` | `SAGAKIT_QUEUE_KIND` | `classic` (or `quorum`) |
/// | `sagakit.prefetch` | `SAGAKIT_PREFETCH` | `64` |
/// | `sagakit.max.concurrent.handlers` | `SAGAKIT_MAX_CONCURRENT_HANDLERS` | `64` |
/// | `sagakit.reaper.enabled` | `SAGAKIT_REAPER_ENABLED` | `true` |
/// | `sagakit.reaper.poll.seconds` | `SAGAKIT_REAPER_POLL_SECONDS` | `300` |
/// | `sagakit.reaper.stalled.seconds` | `SAGAKIT_REAPER_STALLED_SECONDS` | `900` |
/// | `sagakit.reaper.max.attempts` | `SAGAKIT_REAPER_MAX_ATTEMPTS` | `3` |
/// | `sagakit.log.level` | `SAGAKIT_LOG_LEVEL` | `info` |
/// | `sagakit.instance` | `SAGAKIT_INSTANCE` | `<service>-<pid>` |
///
/// Stores read their own keys (`SQLiteSagaStore(reader:)`, `PostgresSagaStore(reader:)`): pass
/// them `app.config.scoped(to: …)`.
///
/// The initialiser does no I/O: the bus connects when ``run(store:services:)`` or
/// ``runParticipant(handlers:store:configuration:services:)`` runs, and keeps trying (with
/// backoff and a log line per attempt) while the broker is not up yet.
public struct SagaApplication: Sendable {
    /// The service name (its queue is `<prefix>.<service>`).
    public let service: String
    /// This instance's name, in log lines and in the broker's connection list.
    public let instance: String
    /// Where the configuration was read from; hand scopes of it to the store.
    public let config: ConfigReader
    /// The service's logger (its metadata carries the instance name).
    public let logger: Logger
    /// The saga definitions this service runs.
    public let definitions: SagaDefinitionRegistry
    /// The broker names.
    public let topology: SagaTopology
    /// The participant's options (prefetch, outbox relay, reaper) read from `config`.
    public let participantConfiguration: ParticipantConfiguration
    /// The RabbitMQ bus (not connected until the application runs).
    public let bus: RabbitMQBus

    /// Reads the configuration, sets up logging, and creates the bus. Does no I/O.
    ///
    /// - Parameters:
    ///   - service: the service name.
    ///   - definitions: the saga definitions this service takes part in.
    ///   - config: where to read settings; the process environment when `nil`.
    ///   - bootstrapLogging: whether to make ``ConsoleLogHandler`` the process's log backend (at
    ///     the configured level). A backend the process bootstrapped before is kept either way;
    ///     pass `false` when `main` bootstraps its own backend after this.
    /// - Throws: `invalidConfiguration` naming the setting that is malformed, or
    ///   `invalidDefinition` when two definitions share a name.
    public init(
        service: String,
        definitions: [SagaDefinition],
        config: ConfigReader? = nil,
        bootstrapLogging: Bool = true
    ) throws {
        let config =
            config
            ?? ConfigReader(
                provider: EnvironmentVariablesProvider(secretsSpecifier: .specific(["AMQP_URL", "SAGAKIT_STORE_URL", "POSTGRES_URL"])))
        let sagakit = config.scoped(to: "sagakit")
        let level = try sagakit.sagaChoice(
            "log.level", default: "info", choices: Logger.Level.allCases.map(\.rawValue))
        let kept = bootstrapLogging && !ConsoleLogHandler.bootstrapOnce(level: Logger.Level(rawValue: level) ?? .info)
        let instance = sagakit.string(forKey: "instance") ?? "\(service)-\(ProcessInfo.processInfo.processIdentifier)"
        var logger = Logger(label: service)
        logger[metadataKey: "instance"] = "\(instance)"

        var participant = try ParticipantConfiguration(service: service, reader: sagakit)
        try participant.validate()
        var rabbit = try RabbitMQConfiguration(reader: config.scoped(to: "amqp"))
        rabbit.connectionName = "\(service) \(instance)"
        rabbit.logger = logger
        participant.service = service
        participant.instanceName = instance

        self.service = service
        self.instance = instance
        self.config = config
        self.logger = logger
        self.definitions = try SagaDefinitionRegistry(definitions)
        self.topology = participant.topology
        self.participantConfiguration = participant
        self.bus = RabbitMQBus(configuration: rabbit)
        if kept {
            logger.info("the process bootstrapped its own logging backend before; SagaKit's console handler is not installed")
        }
    }

    /// The values this process's SagaKit components share, with `store`.
    public func runtime(store: any SagaStore) -> SagaRuntime {
        SagaRuntime(definitions: definitions, bus: bus, store: store, topology: topology, logger: logger)
    }

    /// Runs the service's participant with `handlers` until SIGTERM or SIGINT, together with the
    /// store (when it is a `Service`), the bus and `services`; then stops them in reverse order:
    /// the participant first (running handlers finish and acknowledge), the bus, the store.
    ///
    /// - Parameters:
    ///   - handlers: the service's handlers.
    ///   - store: the saga store.
    ///   - configuration: participant options; those read from ``config`` when `nil`.
    ///   - services: more services of the process (started after the bus, stopped before it).
    public func runParticipant(
        handlers: SagaHandlerRegistry,
        store: any SagaStore,
        configuration: ParticipantConfiguration? = nil,
        services: [any Service] = []
    ) async throws {
        let participant = SagaParticipant(
            configuration: configuration ?? participantConfiguration, handlers: handlers, runtime: runtime(store: store))
        try await run(store: store, services: services + [participant])
    }

    /// Runs the store (when it is a `Service`), the bus and `services` until SIGTERM or SIGINT,
    /// or until one of `services` returns (a starter that has finished its work ends the
    /// process gracefully); then stops them in reverse order.
    ///
    /// Use it for processes that start sagas without handling any step:
    ///
    /// ```swift
    /// let manager = SagaManager(runtime: app.runtime(store: store))
    /// try await app.run(store: store, services: [MyHTTPServer(manager: manager)])
    /// ```
    public func run(store: any SagaStore, services: [any Service]) async throws {
        var all: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let storeService = store as? any Service {
            all.append(.init(service: storeService))
        }
        all.append(.init(service: bus))
        for service in services {
            all.append(.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup))
        }
        logger.info(
            "starting",
            metadata: [
                "broker": "\(bus.configuration.redactedURL)", "prefix": "\(topology.prefix)",
                "definitions": "\(definitions.all.map(\.name).joined(separator: ","))",
            ])
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: all, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            logger.error("stopped with an error", metadata: ["error": "\(error)"])
            throw error
        }
        logger.info("stopped")
    }
}

extension SagaApplication {
    /// Runs `body` with a ``SagaManager`` while the store (when it is a `Service`), the bus and
    /// the manager run around it, then stops them gracefully and returns what `body` returned:
    /// the whole of a process that starts sagas and waits for them (a starter, a batch job, a
    /// script).
    ///
    /// ```swift
    /// let final = try await app.withManager(store: store) { manager in
    ///     let id = try await manager.start("trip", payload: Trip(tripId: "t-1", nights: 3), id: "trip-t-1")
    ///     return try await manager.outcome(of: id, timeout: .seconds(60))
    /// }
    /// ```
    ///
    /// The manager runs as a service, so it hears the sagas' lifecycle events: `outcome(of:)`
    /// returns as a saga ends instead of reading the store over and over. SIGTERM or SIGINT
    /// cancel `body` (it throws `CancellationError`). A process that also serves requests runs
    /// the manager next to its server with ``run(store:services:)`` instead.
    ///
    /// - Parameters:
    ///   - store: the saga store.
    ///   - services: more services of the process, started before the manager and stopped after
    ///     it (a tracer's exporter, so that the spans of `body` are flushed at the end).
    ///   - body: the work, with the running manager.
    /// - Throws: what `body` throws, or what stopped the store or the bus.
    public func withManager<T: Sendable>(
        store: any SagaStore, services: [any Service] = [], _ body: @escaping @Sendable (SagaManager) async throws -> T
    ) async throws -> T {
        let manager = SagaManager(runtime: runtime(store: store))
        let outcome = Mutex<Result<T, any Error>?>(nil)
        let job = ManagerJob {
            let result: Result<T, any Error>
            do {
                result = .success(try await cancelWhenGracefulShutdown { try await body(manager) })
            } catch {
                result = .failure(error)
            }
            outcome.withLock { $0 = result }
        }
        try await run(store: store, services: services + [manager, job])
        guard let result = outcome.withLock({ $0 }) else {
            throw CancellationError()
        }
        return try result.get()
    }
}

/// The body of ``SagaApplication/withManager(store:_:)`` as a service: it returns when the body
/// has, which shuts the group down gracefully.
private struct ManagerJob: Service {
    let body: @Sendable () async -> Void

    init(_ body: @escaping @Sendable () async -> Void) {
        self.body = body
    }

    func run() async {
        await body()
    }
}

extension ConsoleLogHandler {
    private static let bootstrapped = Atomic<Bool>(false)

    /// Bootstraps the console handler unless this process bootstrapped it already, or bootstrapped
    /// another backend before (swift-otel's `OTel.bootstrap()` does by default): swift-log allows
    /// one bootstrap per process, and a second one stops it.
    ///
    /// - Returns: whether the console handler is now the process's backend.
    @discardableResult
    public static func bootstrapOnce(level: Logger.Level) -> Bool {
        guard bootstrapped.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return !keptOtherBackend.load(ordering: .acquiring)
        }
        // swift-log's default backend until someone bootstraps one; anything else is the
        // process's own choice, kept.
        guard Logger(label: "sagakit").handler is StreamLogHandler else {
            keptOtherBackend.store(true, ordering: .releasing)
            return false
        }
        bootstrap(level: level)
        return true
    }

    private static let keptOtherBackend = Atomic<Bool>(false)
}

extension SagaApplication {
    /// Runs a service's `main` so that a failure ends the process cleanly: one line on standard
    /// error with the program's name and what is wrong and what to do (a ``SagaCore/SagaError``'s
    /// message and recovery suggestion; SagaKit's messages never hold a password), then exit
    /// status 1. Without it, an error thrown out of `main` ends the process with Swift's crash
    /// report (a signal and a backtrace) for what is usually a configuration mistake.
    ///
    /// ```swift
    /// @main struct PaymentService {
    ///     static func main() async {
    ///         await SagaApplication.exitOnFailure {
    ///             let app = try SagaApplication(service: "payment", definitions: [TripSaga.definition])
    ///             try await app.runParticipant(handlers: handlers, store: PostgresSagaStore(reader: app.config.scoped(to: "postgres")))
    ///         }
    ///     }
    /// }
    /// ```
    /// The body runs in the caller's isolation (`main`'s, the main actor).
    public static func exitOnFailure(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> Void) async {
        do {
            try await body()
        } catch {
            let program = CommandLine.arguments.first.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "service"
            FileHandle.standardError.write(Data("\(program): \(error)\n".utf8))
            exit(1)
        }
    }
}
