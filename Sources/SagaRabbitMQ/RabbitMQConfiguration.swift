public import Logging
public import SagaCore

/// How ``RabbitMQBus`` connects to a broker and how it behaves.
///
/// ```swift
/// var configuration = try RabbitMQConfiguration(url: "amqp://guest:guest@127.0.0.1:5672/%2F")
/// configuration.confirmWindow = 512
/// let bus = try await RabbitMQBus.connect(configuration)
/// ```
public struct RabbitMQConfiguration: Sendable {
    /// One broker address. A configuration has at least one; connecting tries them in order and moves on to the
    /// next one (round-robin) when one fails.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// Host name or address.
        public var host: String
        /// AMQP port.
        public var port: Int

        /// Creates an endpoint.
        public init(host: String, port: Int = 5672) {
            self.host = host
            self.port = port
        }

        /// `host:port` (IPv6 addresses in brackets).
        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// The brokers to connect to, tried in order (round-robin on failure); never empty.
    public var endpoints: [Endpoint] {
        didSet { if endpoints.isEmpty { endpoints = oldValue } }
    }
    /// The first endpoint's host. Setting it changes the first endpoint.
    public var host: String {
        get { endpoints[0].host }
        set { endpoints[0].host = newValue }
    }
    /// The first endpoint's port. Setting it changes the first endpoint.
    public var port: Int {
        get { endpoints[0].port }
        set { endpoints[0].port = newValue }
    }
    /// User name.
    public var user: String
    /// Password. Never logged; ``redactedURL`` hides it.
    public var password: String
    /// Virtual host (`/` by default).
    public var vhost: String
    /// How long to wait for the TCP connection and the AMQP handshake.
    public var connectTimeout: Duration = .seconds(10)
    /// Heartbeat interval asked of the broker; `.zero` disables heartbeats. A connection that hears nothing
    /// for two intervals is considered lost.
    public var heartbeat: Duration = .seconds(30)
    /// How long a synchronous broker operation (a declaration, starting a consumer) may take.
    public var operationTimeout: Duration = .seconds(30)
    /// The number of published messages whose confirm may be outstanding at once.
    public var confirmWindow: Int = 256
    /// The largest body ``RabbitMQBus/publish(_:)`` accepts; larger ones fail with `messageTooLarge`.
    public var maxBodySize: Int = 16 * 1024 * 1024
    /// The first delay before reconnecting after a connection loss; it doubles on each failed attempt.
    public var reconnectDelayMin: Duration = .milliseconds(100)
    /// The longest delay between two reconnection attempts.
    public var reconnectDelayMax: Duration = .seconds(10)
    /// How long a publish waits for a lost connection to come back before it fails with `connectionLost`.
    public var publishRecoveryTimeout: Duration = .seconds(60)
    /// How long ``RabbitMQBus/shutdown()`` waits for deliveries to be settled and confirms to arrive.
    public var shutdownTimeout: Duration = .seconds(10)
    /// What ``RabbitMQBus/run()`` does when the broker cannot be reached at start: `false` (the default) keeps
    /// trying with backoff, logging each failure, and calls wait for the connection (at most `operationTimeout`);
    /// `true` makes `run()` throw the first connection error.
    public var failFastOnStartup = false
    /// A name shown in the broker's connection list (suffixed with `publisher` / `consumer`).
    public var connectionName: String = "SagaKit"
    /// Where the bus logs (connection losses and recoveries at `info`/`warning`, details at `debug`).
    public var logger: Logger = Logger(label: "SagaKit.RabbitMQ")

    /// Creates a configuration; the defaults reach a local broker as `guest`.
    public init(
        host: String = "127.0.0.1",
        port: Int = 5672,
        user: String = "guest",
        password: String = "guest",
        vhost: String = "/"
    ) {
        self.endpoints = [Endpoint(host: host, port: port)]
        self.user = user
        self.password = password
        self.vhost = vhost
    }

    /// Parses an AMQP URL: `amqp://user:password@host:port/vhost?heartbeat=30`, with several brokers written
    /// `amqp://user:password@host1:5672,host2:5673/vhost` (see ``SagaCore/ConnectionURL``).
    ///
    /// User, password and vhost are percent-decoded, so the default vhost `/` is written `%2F`; an empty path
    /// means `/` too. The port defaults to 5672; without a host the broker is `127.0.0.1`. Query parameters
    /// `heartbeat` and `connection_timeout` (seconds) are understood. `amqps` (TLS) is not supported.
    ///
    /// - Throws: ``BusError`` with code `invalidURL`; its text never contains the password.
    public init(url: String) throws(BusError) {
        self.init()
        let parsed: ConnectionURL
        do {
            parsed = try ConnectionURL(parsing: url)
        } catch {
            throw BusError(.invalidURL, error.message, recoverySuggestion: error.recoverySuggestion)
        }
        guard parsed.scheme == "amqp" else {
            if parsed.scheme == "amqps" {
                throw BusError(
                    .invalidURL, "amqps:// (TLS) URLs are not supported ('\(parsed.redacted)')",
                    recoverySuggestion: "use amqp://")
            }
            throw BusError(
                .invalidURL, "'\(parsed.redacted)' is not an AMQP URL",
                recoverySuggestion: "write amqp://user:password@host:port/vhost")
        }
        if let user = parsed.user { self.user = user }
        if let password = parsed.password { self.password = password }
        if !parsed.hosts.isEmpty {
            endpoints = parsed.hosts.map { Endpoint(host: $0.name, port: $0.port ?? 5672) }
        }
        vhost = parsed.path.count <= 1 ? "/" : String(parsed.path.dropFirst())
        for (name, value) in parsed.queryItems {
            guard let seconds = Int(value), seconds >= 0 else { continue }
            switch name {
            case "heartbeat": heartbeat = .seconds(seconds)
            case "connection_timeout": connectTimeout = .seconds(seconds)
            default: continue
            }
        }
    }

    /// The URL without the password, for logs and errors.
    public var redactedURL: String {
        let hosts = endpoints.map(\.description).joined(separator: ",")
        let encodedVhost = vhost.map { $0 == "/" ? "%2F" : String($0) }.joined()
        return "amqp://\(user)@\(hosts)/\(encodedVhost)"
    }

    /// The URL with any password replaced by `***`.
    static func redacted(_ url: String) -> String { ConnectionURL.redact(url) }

    /// The parameters one connection to endpoint number `endpoint` needs.
    func connectParameters(role: String, endpoint: Int = 0) -> ConnectParameters {
        let target = endpoints[endpoint % endpoints.count]
        return ConnectParameters(
            host: target.host, port: target.port, user: user, password: password, vhost: vhost,
            connectTimeout: connectTimeout,
            heartbeatSeconds: Int32(heartbeat.components.seconds),
            rpcTimeout: operationTimeout,
            connectionName: "\(connectionName) \(role)"
        )
    }
}
