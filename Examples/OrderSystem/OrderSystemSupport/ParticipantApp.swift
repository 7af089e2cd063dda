import Configuration
import Foundation
public import Logging
public import Participant
import SagaPrometheus

/// How the example services run: SagaKit's `SagaApplication` with the example's flags, data
/// directory and store-by-URL.
public enum ParticipantApp {
    /// What every example service does first: reads its configuration, sets up console logging,
    /// and names this instance (`<service>-<pid>` unless one is given); the logger carries the
    /// instance name.
    public static func prepare(service: String, connection: ConnectionOptions, instance: String?) throws
        -> (configuration: AppConfiguration, instance: String, logger: Logger)
    {
        let configuration = try connection.configuration()
        ConsoleLogHandler.bootstrapOnce(level: configuration.logLevel)
        let instance = instance ?? "\(service)-\(ProcessInfo.processInfo.processIdentifier)"
        var logger = Logger(label: service)
        logger[metadataKey: "instance"] = "\(instance)"
        return (configuration, instance, logger)
    }

    /// Connects to the broker, trying `attempts` times a second apart, for the example's tools
    /// that use the broker directly.
    public static func connectBus(_ configuration: AppConfiguration, name: String, logger: Logger, attempts: Int = 1) async throws
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

    /// The `SagaApplication` of one example service.
    public static func application(service: String, instance: String, configuration: AppConfiguration) throws -> SagaApplication {
        let named = ConfigReader(providers: [
            InMemoryProvider(
                name: "instance", values: [AbsoluteConfigKey(["sagakit", "instance"]): ConfigValue(.string(instance), isSecret: false)]),
            EnvironmentVariablesProvider(
                environmentVariables: configuration.processEnvironment, secretsSpecifier: .specific(["AMQP_URL", "SAGAKIT_STORE_URL"])),
        ])
        return try SagaApplication(
            service: service, definitions: [OrderSaga.definition], config: named, bootstrapLogging: false)
    }

    /// The Prometheus endpoint of this process, when `--metrics-port` / `SAGAKIT_METRICS_PORT` is
    /// set (then swift-prometheus becomes the process's metrics backend); none otherwise. Call it
    /// before the process records any metric, and run what it returns with the other services.
    public static func metrics(_ configuration: AppConfiguration, logger: Logger) throws -> [any Service] {
        try SagaPrometheus.bootstrap(reader: configuration.reader, logger: logger).map { [$0] } ?? []
    }

    /// Runs the participant of `service` until SIGINT or SIGTERM.
    /// - Parameters:
    ///   - service: the service name (its queue is `<prefix>.<service>`).
    ///   - instance: this instance's name, in logs and in the broker's connection list.
    ///   - configuration: broker, store and participant settings.
    ///   - handlers: the service's handlers.
    ///   - logger: the service's logger.
    public static func run(
        service: String,
        instance: String,
        configuration: AppConfiguration,
        handlers: SagaHandlerRegistry,
        logger: Logger
    ) async throws {
        let app = try application(service: service, instance: instance, configuration: configuration)
        let metrics = try metrics(configuration, logger: logger)
        logger.info("opening the saga store", metadata: ["store": "\(configuration.redactedStoreURL)"])
        let opened = try await AppStore.open(url: configuration.storeURL, logger: logger)
        // The application runs the store (a Service) before the bus and the participant, and
        // stops it after them; the metrics endpoint (when enabled) runs beside them.
        try await app.runParticipant(handlers: handlers, store: opened.store, services: opened.services + metrics)
    }
}
