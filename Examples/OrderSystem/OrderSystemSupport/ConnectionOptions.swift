public import ArgumentParser

/// The flags every SagaKit example executable and the `saga` CLI accept. Each overrides an
/// environment variable (see ``AppConfiguration``).
public struct ConnectionOptions: ParsableArguments, Sendable {
    /// `--amqp-url` (env `AMQP_URL`).
    @Option(name: .customLong("amqp-url"), help: "Broker URL (env AMQP_URL; default amqp://guest:guest@127.0.0.1:5672/%2F).")
    public var amqpURL: String?

    /// `--store-url` (env `SAGAKIT_STORE_URL`).
    @Option(
        name: .customLong("store-url"),
        help:
            "Saga store: sqlite:///abs/path.db or postgres://user:pass@host:port/db (env SAGAKIT_STORE_URL; default sqlite under --data-dir)."
    )
    public var storeURL: String?

    /// `--prefix` (env `SAGAKIT_PREFIX`).
    @Option(help: "Prefix of every exchange and queue name (env SAGAKIT_PREFIX; default sagakit).")
    public var prefix: String?

    /// `--data-dir` (env `SAGAKIT_DATA_DIR`).
    @Option(name: .customLong("data-dir"), help: "Directory of the services' own databases (env SAGAKIT_DATA_DIR; default .local/demo).")
    public var dataDirectory: String?

    /// `--log-level` (env `SAGAKIT_LOG_LEVEL`).
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error (env SAGAKIT_LOG_LEVEL; default info).")
    public var logLevel: String?

    /// `--metrics-port` (env `SAGAKIT_METRICS_PORT`): serve Prometheus metrics on this port.
    @Option(
        name: .customLong("metrics-port"),
        help: "Serve Prometheus metrics at http://127.0.0.1:<port>/metrics (env SAGAKIT_METRICS_PORT; default off; 0 = any free port)."
    )
    public var metricsPort: Int?

    /// Creates empty options (every value from the environment or the defaults).
    public init() {}

    /// The configuration these flags, the environment and the defaults give.
    public func configuration() throws -> AppConfiguration {
        try AppConfiguration.load(flags: [
            "amqp.url": amqpURL,
            "sagakit.store.url": storeURL,
            "sagakit.prefix": prefix,
            "sagakit.data.dir": dataDirectory,
            "sagakit.log.level": logLevel,
            "sagakit.metrics.port": metricsPort.map(String.init),
        ])
    }
}
