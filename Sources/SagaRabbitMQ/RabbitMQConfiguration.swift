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
    /// Broker host name or address.
    public var host: String
    /// Broker AMQP port.
    public var port: Int
    /// User name.
    public var user: String
    /// Password.
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
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.vhost = vhost
    }

    /// Parses an AMQP URL: `amqp://user:password@host:port/vhost`.
    ///
    /// User, password and vhost are percent-decoded, so the default vhost `/` is written `%2F`; an empty path
    /// means `/` too. The port defaults to 5672. Query parameters `heartbeat` and `connection_timeout`
    /// (seconds) are understood. `amqps` (TLS) is not supported.
    ///
    /// - Throws: ``BusError`` with code `invalidURL`.
    public init(url: String) throws(BusError) {
        self.init()
        let scheme = "amqp://"
        guard url.lowercased().hasPrefix(scheme) else {
            if url.lowercased().hasPrefix("amqps://") {
                throw BusError(.invalidURL, "amqps:// (TLS) URLs are not supported", recoverySuggestion: "use amqp://")
            }
            throw BusError(
                .invalidURL, "'\(Self.redacted(url))' is not an AMQP URL",
                recoverySuggestion: "write amqp://user:password@host:port/vhost")
        }
        var rest = Substring(url.dropFirst(scheme.count))
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        var authority = rest
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        }
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = try Self.percentDecoded(userInfo[..<colon], url)
                password = try Self.percentDecoded(userInfo[userInfo.index(after: colon)...], url)
            } else {
                user = try Self.percentDecoded(userInfo, url)
            }
        }
        var hostPart = authority
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { port = try Self.port(after.dropFirst(), url) }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            port = try Self.port(authority[authority.index(after: colon)...], url)
        }
        if !hostPart.isEmpty { host = String(hostPart) }
        vhost = path.isEmpty ? "/" : try Self.percentDecoded(path, url)
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let seconds = Int(parts[1]), seconds >= 0 else { continue }
            switch parts[0] {
            case "heartbeat": heartbeat = .seconds(seconds)
            case "connection_timeout": connectTimeout = .seconds(seconds)
            default: continue
            }
        }
    }

    /// The URL without the password, for logs and errors.
    public var redactedURL: String {
        "amqp://\(user)@\(host):\(port)/\(vhost == "/" ? "%2F" : vhost)"
    }

    private static func port(_ text: Substring, _ url: String) throws(BusError) -> Int {
        guard let port = Int(text), (1...65535).contains(port) else {
            throw BusError(.invalidURL, "'\(text)' is not a valid port in '\(redacted(url))'")
        }
        return port
    }

    private static func percentDecoded(_ text: Substring, _ url: String) throws(BusError) -> String {
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(hexValue), let low = utf8.next().flatMap(hexValue) else {
                throw BusError(.invalidURL, "bad percent-encoding in '\(redacted(url))'")
            }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// The URL with any password replaced by `***`.
    static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url.lastIndex(of: "@"), at > schemeEnd.upperBound
        else { return url }
        let userInfo = url[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(url[at...])
    }

    /// The parameters one connection needs.
    func connectParameters(role: String) -> ConnectParameters {
        ConnectParameters(
            host: host, port: port, user: user, password: password, vhost: vhost,
            connectTimeout: connectTimeout,
            heartbeatSeconds: Int32(heartbeat.components.seconds),
            rpcTimeout: operationTimeout,
            connectionName: "\(connectionName) \(role)"
        )
    }
}
