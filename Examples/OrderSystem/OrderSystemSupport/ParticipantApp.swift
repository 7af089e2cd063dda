import Foundation
public import Logging
public import Participant

/// Runs one service's participant the way every example service does: opens the store and the
/// bus from an ``AppConfiguration``, runs a `ServiceGroup` that shuts down gracefully on SIGINT
/// and SIGTERM, then closes the bus and the store.
public enum ParticipantApp {
    /// What every example service does first: reads its configuration, sets up console logging,
    /// and names this instance (`<service>-<pid>` unless one is given); the logger carries the
    /// instance name.
    public static func prepare(service: String, connection: ConnectionOptions, instance: String?) throws
        -> (configuration: AppConfiguration, instance: String, logger: Logger)
    {
        let configuration = try connection.configuration()
        ConsoleLogHandler.bootstrap(level: configuration.logLevel)
        let instance = instance ?? "\(service)-\(ProcessInfo.processInfo.processIdentifier)"
        var logger = Logger(label: service)
        logger[metadataKey: "instance"] = "\(instance)"
        return (configuration, instance, logger)
    }

    /// Connects to the broker, retrying for a while when it is not up yet (a service started
    /// together with the broker).
    public static func connectBus(_ configuration: AppConfiguration, name: String, logger: Logger, attempts: Int = 10) async throws
        -> RabbitMQBus
    {
        var rabbit = try RabbitMQConfiguration(url: configuration.amqpURL)
        rabbit.connectionName = name
        rabbit.logger = logger
        var attempt = 1
        while true {
            do {
                return try await RabbitMQBus.connect(rabbit)
            } catch let error as BusError where error.code == .unreachable && attempt < attempts {
                logger.warning("broker not reachable yet; retrying in 1 s", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                attempt += 1
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Runs the participant of `service` until SIGINT or SIGTERM.
    /// - Parameters:
    ///   - service: the service name (its queue is `<prefix>.<service>`).
    ///   - instance: this instance's name, in logs and in the broker's connection list.
    ///   - configuration: broker, store and participant settings.
    ///   - handlers: the service's handlers.
    ///   - services: more services to run in the same group (started before the participant,
    ///     stopped after it).
    ///   - logger: the service's logger.
    public static func run(
        service: String,
        instance: String,
        configuration: AppConfiguration,
        handlers: SagaHandlerRegistry,
        services: [any Service] = [],
        logger: Logger
    ) async throws {
        logger.info(
            "starting",
            metadata: [
                "broker": "\(configuration.redactedAMQPURL)", "store": "\(configuration.redactedStoreURL)",
                "prefix": "\(configuration.prefix)",
            ]
        )
        let opened = try await AppStore.open(url: configuration.storeURL, logger: logger)
        let bus: RabbitMQBus
        do {
            bus = try await connectBus(configuration, name: "\(service) \(instance)", logger: logger)
        } catch {
            await opened.close()
            throw error
        }
        let participant = SagaParticipant(
            configuration: ParticipantConfiguration(
                service: service,
                topology: configuration.topology,
                prefetch: configuration.prefetch,
                reaper: configuration.reaper
            ),
            definitions: OrderSaga.definitions,
            handlers: handlers,
            bus: bus,
            store: opened.store,
            logger: logger
        )
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: (opened.services + services + [participant]).map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            logger.error("stopped with an error", metadata: ["error": "\(error)"])
            await bus.shutdown()
            await opened.close()
            throw error
        }
        await bus.shutdown()
        await opened.close()
        logger.info("stopped")
    }
}
