public import Configuration
public import Foundation
public import Logging
public import Participant

/// The settings shared by the example services and the demo driver: SagaKit's own settings (read
/// by `SagaApplication` from ``reader``) plus the example's data directory.
///
/// Every value is read, in this order, from a command-line flag, an environment variable, and a
/// default that works on a fresh clone:
///
/// | setting | flag | environment | default |
/// |---|---|---|---|
/// | broker | `--amqp-url` | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2F` |
/// | saga store | `--store-url` | `SAGAKIT_STORE_URL` | `sqlite://<data dir>/sagas.db` |
/// | name prefix | `--prefix` | `SAGAKIT_PREFIX` | `sagakit` |
/// | local data | `--data-dir` | `SAGAKIT_DATA_DIR` | `<project>/.local/demo` |
/// | log level | `--log-level` | `SAGAKIT_LOG_LEVEL` | `info` |
/// | reaper poll | | `SAGAKIT_REAPER_POLL_SECONDS` | `300` |
/// | reaper threshold | | `SAGAKIT_REAPER_STALLED_SECONDS` | `900` |
/// | reaper attempts | | `SAGAKIT_REAPER_MAX_ATTEMPTS` | `3` |
/// | prefetch | `--prefetch` | `SAGAKIT_PREFETCH` | `64` |
/// | Prometheus endpoint | `--metrics-port` | `SAGAKIT_METRICS_PORT` | off (`SAGAKIT_METRICS_HOST`: `127.0.0.1`) |
///
/// Every other setting of `SagaApplication` (Docs/Configuration.md: `SAGAKIT_MAX_CONCURRENT_HANDLERS`,
/// `SAGAKIT_QUEUE_KIND`, `SAGAKIT_IN_PROCESS_STEPS`, …) is read from the environment as well.
///
/// The reading is done by apple/swift-configuration (flags become an in-memory provider in
/// front of the environment provider).
public struct AppConfiguration: Sendable {
    /// The AMQP URL of the broker.
    public var amqpURL: String
    /// The saga store URL: `sqlite:///abs/path.db` or `postgres://user:pass@host:port/db`.
    public var storeURL: String
    /// The prefix of every exchange and queue name.
    public var prefix: String
    /// Where the example services keep their own databases (and the default SQLite store).
    public var dataDirectory: String
    /// The log level of the console handler.
    public var logLevel: Logger.Level
    /// How many unacknowledged deliveries a participant takes at once.
    public var prefetch: Int
    /// The stalled-saga reaper each participant runs.
    public var reaper: ReaperConfiguration
    /// Where the values came from (flags in front of the environment), for `SagaApplication`.
    /// The fields above are what it read; a change to them reaches child processes through
    /// ``environment``, not this reader.
    public var reader: ConfigReader

    /// The default broker URL (a local broker, user `guest`).
    public static let defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/%2F"

    /// Reads the configuration.
    /// - Parameters:
    ///   - flags: values given on the command line, keyed like `amqp.url` (nil values are ignored).
    ///   - environment: the environment (the process environment by default).
    public static func load(
        flags: [String: String?] = [:],
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> AppConfiguration {
        var values: [AbsoluteConfigKey: ConfigValue] = [:]
        for case (let key, let value?) in flags {
            values[AbsoluteConfigKey(key.split(separator: ".").map(String.init))] = ConfigValue(
                .string(value), isSecret: key.hasSuffix("url"))
        }
        let reader = ConfigReader(providers: [
            InMemoryProvider(name: "flags", values: values),
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .specific(["AMQP_URL", "SAGAKIT_STORE_URL"])
            ),
        ])
        let sagakit = reader.scoped(to: "sagakit")
        let dataDirectory = absolute(sagakit.string(forKey: "data.dir") ?? defaultDataDirectory())
        let level = try sagakit.sagaChoice("log.level", default: "info", choices: Logger.Level.allCases.map(\.rawValue))
        let participant = try ParticipantConfiguration(service: "example", reader: sagakit)
        return AppConfiguration(
            amqpURL: reader.string(forKey: "amqp.url", isSecret: true) ?? defaultAMQPURL,
            storeURL: sagakit.string(forKey: "store.url", isSecret: true) ?? "sqlite://\(dataDirectory)/sagas.db",
            prefix: participant.topology.prefix,
            dataDirectory: dataDirectory,
            logLevel: Logger.Level(rawValue: level) ?? .info,
            prefetch: participant.prefetch,
            reaper: participant.reaper ?? ReaperConfiguration(),
            reader: reader
        )
    }

    /// The broker and queue names.
    public var topology: SagaTopology { SagaTopology(prefix: prefix) }

    /// The store URL with any password hidden, for logs.
    public var redactedStoreURL: String { ConnectionURL.redact(storeURL) }

    /// The broker URL with any password hidden, for logs.
    public var redactedAMQPURL: String { ConnectionURL.redact(amqpURL) }

    /// A path under the data directory.
    public func dataPath(_ name: String) -> String {
        (dataDirectory as NSString).appendingPathComponent(name)
    }

    /// The environment that makes a child process use this configuration.
    public var environment: [String: String] {
        [
            "AMQP_URL": amqpURL,
            "SAGAKIT_STORE_URL": storeURL,
            "SAGAKIT_PREFIX": prefix,
            "SAGAKIT_DATA_DIR": dataDirectory,
            "SAGAKIT_LOG_LEVEL": logLevel.rawValue,
            "SAGAKIT_PREFETCH": String(prefetch),
            "SAGAKIT_REAPER_POLL_SECONDS": String(Int(reaper.pollInterval.seconds)),
            "SAGAKIT_REAPER_STALLED_SECONDS": String(Int(reaper.stalledThreshold.seconds)),
            "SAGAKIT_REAPER_MAX_ATTEMPTS": String(reaper.maxReapAttempts),
        ]
    }

    /// This process's environment with ``environment`` on top: what a service or a child process
    /// of this configuration reads, so that every SagaKit setting an operator set reaches it,
    /// not only the ones the example has flags for.
    public var processEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.merging(environment) { _, example in example }
    }

    /// `<project>/.local/demo`, where `<project>` is the nearest directory up from the current one
    /// that has a `Package.swift` (the current directory when there is none).
    static func defaultDataDirectory() -> String {
        let cwd = FileManager.default.currentDirectoryPath
        var directory = URL(fileURLWithPath: cwd)
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Package.swift").path) {
                return directory.appendingPathComponent(".local/demo").path
            }
            directory.deleteLastPathComponent()
        }
        return URL(fileURLWithPath: cwd).appendingPathComponent(".local/demo").path
    }

    private static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }
}
