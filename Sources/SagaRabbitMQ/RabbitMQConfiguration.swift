public import Logging
public import SagaCore

#if canImport(Glibc)
    import Glibc
#endif

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

    /// TLS settings for `amqps://` connections (librabbitmq's OpenSSL socket).
    ///
    /// The broker's certificate is verified by default: its chain must lead to a CA in ``caCertificateFile`` and
    /// it must name the host connected to. Turning verification off must be explicit and is logged at `warning`
    /// on every connect.
    public struct TLS: Sendable, Hashable {
        /// A PEM file with the CA certificate(s) that signed the broker's certificate. `nil` uses the system's
        /// bundle (`/etc/ssl/certs/ca-certificates.crt`) when it exists: librabbitmq does not read the system's
        /// trust store by itself.
        public var caCertificateFile: String?
        /// A PEM client certificate, for brokers that ask for one (`ssl_options.fail_if_no_peer_cert`).
        public var clientCertificateFile: String?
        /// The PEM private key of ``clientCertificateFile`` (unencrypted). Its content is never logged.
        public var clientKeyFile: String?
        /// Verify the broker's certificate chain. Default `true`.
        public var verifyPeer: Bool
        /// Verify that the broker's certificate names the host connected to. Default `true`.
        public var verifyHostname: Bool

        /// Creates TLS settings; verification is on unless turned off here.
        public init(
            caCertificateFile: String? = nil, clientCertificateFile: String? = nil, clientKeyFile: String? = nil,
            verifyPeer: Bool = true, verifyHostname: Bool = true
        ) {
            self.caCertificateFile = caCertificateFile
            self.clientCertificateFile = clientCertificateFile
            self.clientKeyFile = clientKeyFile
            self.verifyPeer = verifyPeer
            self.verifyHostname = verifyHostname
        }

        /// The system CA bundle used when no CA file is given.
        static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

        var parameters: TLSParameters {
            var ca = caCertificateFile
            if ca == nil, verifyPeer, access(Self.systemBundle, R_OK) == 0 { ca = Self.systemBundle }
            return TLSParameters(
                caCertificateFile: ca, clientCertificateFile: clientCertificateFile, clientKeyFile: clientKeyFile,
                verifyPeer: verifyPeer, verifyHostname: verifyPeer && verifyHostname)
        }
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
    /// TLS settings; `nil` (the default) connects over plain TCP. An `amqps://` URL sets them.
    public var tls: TLS?
    /// A name shown in the broker's connection list (suffixed with `publisher` / `consumer`).
    public var connectionName: String = "SagaKit"
    /// Where the bus logs (connection losses and recoveries at `info`/`warning`, details at `debug`).
    public var logger: Logger = Logger(label: "SagaKit.RabbitMQ")
    /// Where each connection says whether it is up (`broker connection (publisher)`, `… (consumer)`),
    /// for readiness probes: the process's registry unless told otherwise.
    public var health: SagaHealth = .process

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
    /// `heartbeat` (seconds) and `connection_timeout` (milliseconds, as RabbitMQ's URI specification and other
    /// clients read it; under 100 is refused as a likely count of seconds) are understood.
    ///
    /// `amqps://` connects with TLS (port 5671 by default) and understands the query items `cacertfile` (PEM CA
    /// file), `certfile` and `keyfile` (client certificate and key), `verify` (`verify_peer`, the default, or
    /// `verify_none`, which turns certificate verification off and is logged at `warning`) and `verify_hostname`
    /// (`true`/`false`): `amqps://user:pw@broker:5671/%2F?cacertfile=/etc/sagakit/ca.pem`.
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
        guard parsed.scheme == "amqp" || parsed.scheme == "amqps" else {
            throw BusError(
                .invalidURL, "'\(parsed.redacted)' is not an AMQP URL",
                recoverySuggestion: "write amqp://user:password@host:port/vhost (or amqps:// for TLS)")
        }
        let secure = parsed.scheme == "amqps"
        if secure { tls = TLS() }
        if let user = parsed.user { self.user = user }
        if let password = parsed.password { self.password = password }
        if !parsed.hosts.isEmpty {
            endpoints = parsed.hosts.map { Endpoint(host: $0.name, port: $0.port ?? (secure ? 5671 : 5672)) }
        } else if secure {
            endpoints = [Endpoint(host: "127.0.0.1", port: 5671)]
        }
        vhost = parsed.path.count <= 1 ? "/" : String(parsed.path.dropFirst())
        for (name, value) in parsed.queryItems {
            if try applyTLSQueryItem(name, value, secure: secure, redactedURL: parsed.redacted) { continue }
            // Other items of the RabbitMQ URI specification (channel_max, frame_max, …) are not
            // used by this client and are ignored; a malformed value of one it uses is an error.
            guard name == "heartbeat" || name == "connection_timeout" else { continue }
            // RabbitMQ's URI specification: heartbeat in seconds, connection_timeout in milliseconds.
            let unit = name == "heartbeat" ? "seconds" : "milliseconds"
            guard let number = Int(value), number >= 0 else {
                throw BusError(
                    .invalidURL,
                    "the query item '\(name)' of the AMQP URL '\(parsed.redacted)' must be a whole number of \(unit), not '\(PrintableText.escaped(value))'",
                    recoverySuggestion:
                        "fix or remove it (AMQP_HEARTBEAT_SECONDS and AMQP_CONNECT_TIMEOUT_SECONDS set the same, in seconds)")
            }
            if name == "heartbeat" {
                heartbeat = .seconds(number)
            } else {
                guard number >= 100 else {
                    throw BusError(
                        .invalidURL,
                        "the query item 'connection_timeout' of the AMQP URL '\(parsed.redacted)' is in milliseconds (RabbitMQ's URI specification): \(number) ms is too short to connect",
                        recoverySuggestion:
                            "for \(number) seconds write connection_timeout=\(number * 1000), or set AMQP_CONNECT_TIMEOUT_SECONDS=\(number)"
                    )
                }
                connectTimeout = .milliseconds(number)
            }
        }
    }

    /// Applies a TLS query item of an AMQP URL; `false` when `name` is not one.
    private mutating func applyTLSQueryItem(_ name: String, _ value: String, secure: Bool, redactedURL: String)
        throws(BusError) -> Bool
    {
        guard ["cacertfile", "certfile", "keyfile", "verify", "verify_hostname"].contains(name) else { return false }
        guard secure, var settings = tls else {
            throw BusError(
                .invalidURL, "'\(name)' is a TLS setting, but '\(redactedURL)' is not an amqps:// URL",
                recoverySuggestion: "write amqps:// to connect with TLS")
        }
        switch name {
        case "cacertfile": settings.caCertificateFile = value
        case "certfile": settings.clientCertificateFile = value
        case "keyfile": settings.clientKeyFile = value
        case "verify":
            switch value {
            case "verify_peer", "true": settings.verifyPeer = true
            case "verify_none", "false": settings.verifyPeer = false
            default:
                throw BusError(
                    .invalidURL, "'verify' must be verify_peer or verify_none, not '\(value)' ('\(redactedURL)')")
            }
        default:
            guard let flag = Bool(value) else {
                throw BusError(
                    .invalidURL, "'verify_hostname' must be true or false, not '\(value)' ('\(redactedURL)')")
            }
            settings.verifyHostname = flag
        }
        tls = settings
        return true
    }

    /// The URL without the password, for logs and errors.
    public var redactedURL: String {
        let hosts = endpoints.map(\.description).joined(separator: ",")
        let encodedVhost = vhost.map { $0 == "/" ? "%2F" : String($0) }.joined()
        return "\(tls == nil ? "amqp" : "amqps")://\(user)@\(hosts)/\(encodedVhost)"
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
            connectionName: "\(connectionName) \(role)",
            tls: tls?.parameters
        )
    }
}
