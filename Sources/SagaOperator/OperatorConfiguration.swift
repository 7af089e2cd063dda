import ArgumentParser
import Configuration
import Foundation
import Participant
import SagaConsole

/// The flags every `saga` command accepts. Each overrides an environment variable.
struct OperatorOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("amqp-url"), help: "Broker URL (env AMQP_URL; default amqp://guest:guest@127.0.0.1:5672/%2F).")
    var amqpURL: String?

    @Option(
        name: .customLong("store-url"),
        help: "Saga store: sqlite:///abs/path.db or postgres://user:pass@host:port/db (env SAGAKIT_STORE_URL; required)."
    )
    var storeURL: String?

    @Option(help: "Prefix of every exchange and queue name (env SAGAKIT_PREFIX; default sagakit).")
    var prefix: String?

    @Option(
        help: ArgumentHelp(
            "Payload keys to show as •••• in payloads and dead-letter bodies, at any depth (comma-separated, e.g. cardNumber,email; env SAGAKIT_REDACT).",
            valueName: "keys"))
    var redact: [String] = []

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error (env SAGAKIT_LOG_LEVEL; default error).")
    var logLevel: String?

    /// What to tell the operator about passwords given in these flags: a process's arguments
    /// can be read by every user of the machine (`ps`, `/proc/<pid>/cmdline`) for as long as it
    /// runs, the environment only by its owner. One line per flag that carries a password
    /// (RabbitMQ's public `guest` default aside); the password itself is never in it.
    var passwordWarnings: [String] {
        func carriesPassword(_ url: String?, ignoring known: Set<String> = []) -> Bool {
            guard let url, let password = URLComponents(string: url)?.password, !password.isEmpty else { return false }
            return !known.contains(password)
        }
        var lines: [String] = []
        if carriesPassword(storeURL) {
            lines.append(
                "warning: --store-url carries a password, which every user of this machine can read in the process list while this command runs; set SAGAKIT_STORE_URL (or the password alone in SAGAKIT_STORE_PASSWORD) in the environment instead"
            )
        }
        if carriesPassword(amqpURL, ignoring: ["guest"]) {
            lines.append(
                "warning: --amqp-url carries a password, which every user of this machine can read in the process list while this command runs; set AMQP_URL in the environment instead"
            )
        }
        return lines
    }

    /// The configuration these flags, the environment and the defaults give.
    func configuration(
        environment: [String: String] = ProcessInfo.processInfo.environment, defaultLogLevel: Logger.Level = .error
    ) throws -> OperatorConfiguration {
        var values: [AbsoluteConfigKey: ConfigValue] = [:]
        func flag(_ key: String, _ value: String?, secret: Bool = false) {
            if let value {
                values[AbsoluteConfigKey(key.split(separator: ".").map(String.init))] = ConfigValue(.string(value), isSecret: secret)
            }
        }
        flag("amqp.url", amqpURL, secret: true)
        flag("sagakit.store.url", storeURL, secret: true)
        flag("sagakit.prefix", prefix)
        flag("sagakit.log.level", logLevel)
        flag("sagakit.redact", redact.isEmpty ? nil : redact.joined(separator: ","))
        let reader = ConfigReader(providers: [
            InMemoryProvider(name: "flags", values: values),
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .specific(["AMQP_URL", "SAGAKIT_STORE_URL", "SAGAKIT_STORE_PASSWORD"])),
        ])
        return try OperatorConfiguration(reader: reader, defaultLogLevel: defaultLogLevel)
    }
}

/// What the operator commands read: where the store and the broker are, the names on the broker,
/// and the reaper settings the participants use (so that `saga reap` and `saga show` match them).
struct OperatorConfiguration: Sendable {
    var storeURL: String?
    var topology: SagaTopology
    var reaper: ReaperConfiguration
    var logLevel: Logger.Level
    /// Payload keys the commands show as `••••` (`sagakit.redact`, comma-separated).
    var redactedKeys: Set<String>
    /// Whether keys whose names look secret (`password`, `apiToken`…) are masked too
    /// (`sagakit.redact.defaults`, default `true`).
    var redactsSecretLookingKeys: Bool
    /// The store's keys (`sagakit.store.*`: its URL and every other setting the services read,
    /// such as `schema`, `password` and `tls`), so that the tool opens the store exactly as the
    /// services do.
    var storeReader: ConfigReader
    /// The broker's keys (`amqp.*`: its URL, TLS files, timeouts), read as the services read them.
    var amqpReader: ConfigReader

    /// - Parameter defaultLogLevel: the level when none is configured: `error` for a command
    ///   (its output is what matters), `notice` for the console (a server whose operators'
    ///   actions and refused logins belong in its log).
    init(reader: ConfigReader, defaultLogLevel: Logger.Level = .error) throws {
        let sagakit = reader.scoped(to: "sagakit")
        storeURL = sagakit.string(forKey: "store.url", isSecret: true)
        topology = try SagaTopology(reader: sagakit)
        reaper = try ReaperConfiguration(reader: sagakit.scoped(to: "reaper"))
        let level = try sagakit.sagaChoice(
            "log.level", default: defaultLogLevel.rawValue, choices: Logger.Level.allCases.map(\.rawValue))
        logLevel = Logger.Level(rawValue: level) ?? defaultLogLevel
        redactedKeys = Redactor(list: [sagakit.string(forKey: "redact") ?? ""]).keys
        redactsSecretLookingKeys = try sagakit.sagaChoice("redact.defaults", default: "true", choices: ["true", "false"]) == "true"
        storeReader = sagakit.scoped(to: "store")
        amqpReader = reader.scoped(to: "amqp")
    }

    /// The store URL; there is no default, so that a command never opens (and creates) a store
    /// nobody meant.
    func requireStoreURL() throws -> String {
        guard let storeURL, !storeURL.isEmpty else {
            throw SagaError(
                .invalidConfiguration, "no saga store given",
                recoverySuggestion:
                    "set SAGAKIT_STORE_URL to the store your services use (sqlite:///absolute/path/sagas.db or postgres://user:password@host:5432/database), or pass --store-url (a password in it shows in the process list: keep it in SAGAKIT_STORE_PASSWORD)"
            )
        }
        return storeURL
    }
}
