public import Configuration
import SagaCore

extension RabbitMQConfiguration {
    /// Reads a configuration from swift-configuration (environment variables, command-line flags, files, …).
    ///
    /// ```swift
    /// let reader = ConfigReader(provider: EnvironmentVariablesProvider())
    /// let bus = RabbitMQBus(configuration: try RabbitMQConfiguration(reader: reader.scoped(to: "amqp")))
    /// // AMQP_URL=amqp://user:password@host1:5672,host2:5672/%2F  AMQP_CONFIRM_WINDOW=512
    /// ```
    ///
    /// ## Configuration keys
    /// Every key is optional; a missing one keeps the default of ``init(host:port:user:password:vhost:)``. A value
    /// that is present but malformed throws (it is never ignored silently). Durations are seconds (fractions
    /// allowed).
    /// - `url` (string, **secret**): the AMQP URL, as for ``init(url:)`` (hosts, user, password, vhost,
    ///   `heartbeat` and `connection_timeout` query items).
    /// - `connection.name` (string, default `SagaKit`): the name shown in the broker's connection list.
    /// - `connect.timeout.seconds` (default 10): TCP connection and AMQP handshake.
    /// - `heartbeat.seconds` (default 30; 0 disables heartbeats). Overrides the URL's `heartbeat`.
    /// - `operation.timeout.seconds` (default 30): a synchronous broker operation, and how long calls made
    ///   before the bus is connected wait for it.
    /// - `confirm.window` (int, default 256): publishes whose confirm may be outstanding at once.
    /// - `body.max.bytes` (int, default 16 MiB): the largest message body `publish` accepts.
    /// - `reconnect.delay.min.seconds` (default 0.1) and `reconnect.delay.max.seconds` (default 10): the
    ///   reconnection backoff (doubling from min, capped at max, with jitter).
    /// - `publish.recovery.timeout.seconds` (default 60): how long a publish waits for a lost connection.
    /// - `shutdown.timeout.seconds` (default 10): how long a graceful shutdown waits for settlements and confirms.
    /// - `startup.fail.fast` (bool, default `false`): `true` makes ``RabbitMQBus/run()`` throw when the broker
    ///   cannot be reached at start instead of retrying.
    /// - `tls.enabled` (bool): connect with TLS (an `amqps://` URL does too; `false` turns it off).
    /// - `tls.ca.file`, `tls.cert.file`, `tls.key.file` (paths): the CA file, and the client certificate and key
    ///   (setting any of them turns TLS on).
    /// - `tls.verify` (bool, default `true`): verify the broker's certificate; `false` is logged at `warning`.
    /// - `tls.verify.hostname` (bool, default `true`): check that the certificate names the host.
    ///
    /// - Throws: ``BusError`` `invalidURL` for a bad URL, ``SagaError`` `invalidConfiguration` naming the key for
    ///   any other malformed value. Neither contains the password.
    public init(reader: ConfigReader) throws {
        if let url = reader.string(forKey: "url", isSecret: true) {
            try self.init(url: url)
        } else {
            self.init()
        }
        if let name = reader.string(forKey: "connection.name") { connectionName = name }
        connectTimeout = try Self.seconds(reader, "connect.timeout.seconds") ?? connectTimeout
        heartbeat = try Self.seconds(reader, "heartbeat.seconds", allowZero: true) ?? heartbeat
        operationTimeout = try Self.seconds(reader, "operation.timeout.seconds") ?? operationTimeout
        confirmWindow = try Self.positiveInt(reader, "confirm.window") ?? confirmWindow
        maxBodySize = try Self.positiveInt(reader, "body.max.bytes") ?? maxBodySize
        reconnectDelayMin = try Self.seconds(reader, "reconnect.delay.min.seconds") ?? reconnectDelayMin
        reconnectDelayMax = try Self.seconds(reader, "reconnect.delay.max.seconds") ?? reconnectDelayMax
        publishRecoveryTimeout = try Self.seconds(reader, "publish.recovery.timeout.seconds") ?? publishRecoveryTimeout
        shutdownTimeout = try Self.seconds(reader, "shutdown.timeout.seconds") ?? shutdownTimeout
        failFastOnStartup = try Self.bool(reader, "startup.fail.fast") ?? failFastOnStartup
        try readTLS(reader)
    }

    private mutating func readTLS(_ reader: ConfigReader) throws {
        var settings = tls ?? TLS()
        let enabled = try Self.bool(reader, "tls.enabled")
        var wanted = enabled ?? (tls != nil)
        let files: [(ConfigKey, WritableKeyPath<TLS, String?>)] = [
            ("tls.ca.file", \TLS.caCertificateFile), ("tls.cert.file", \TLS.clientCertificateFile),
            ("tls.key.file", \TLS.clientKeyFile),
        ]
        for (key, path) in files {
            guard let value = reader.string(forKey: key) else { continue }
            settings[keyPath: path] = value
            wanted = wanted || enabled != false
        }
        if let verify = try Self.bool(reader, "tls.verify") { settings.verifyPeer = verify }
        if let verify = try Self.bool(reader, "tls.verify.hostname") { settings.verifyHostname = verify }
        tls = wanted ? settings : nil
    }

    private static func bool(_ reader: ConfigReader, _ key: ConfigKey) throws -> Bool? {
        if let flag = reader.bool(forKey: key) { return flag }
        if let text = reader.string(forKey: key) { throw invalid(reader, key, "must be true or false", text) }
        return nil
    }

    private static func seconds(_ reader: ConfigReader, _ key: ConfigKey, allowZero: Bool = false) throws -> Duration? {
        let value: Double
        if let double = reader.double(forKey: key) {
            value = double
        } else if let int = reader.int(forKey: key) {
            value = Double(int)
        } else if let text = reader.string(forKey: key) {
            guard let parsed = Double(text.filter { !$0.isWhitespace }) else {
                throw invalid(reader, key, "must be a number of seconds", text)
            }
            value = parsed
        } else {
            return nil
        }
        guard value.isFinite, allowZero ? value >= 0 : value > 0 else {
            throw invalid(
                reader, key, allowZero ? "must be a number of seconds, 0 or more" : "must be a number of seconds greater than 0", "\(value)"
            )
        }
        return .milliseconds(Int64((value * 1000).rounded()))
    }

    private static func positiveInt(_ reader: ConfigReader, _ key: ConfigKey) throws -> Int? {
        if let int = reader.int(forKey: key) {
            guard int > 0 else { throw invalid(reader, key, "must be a whole number greater than 0", "\(int)") }
            return int
        }
        if let text = reader.string(forKey: key) {
            guard let int = Int(text.filter { !$0.isWhitespace }), int > 0 else {
                throw invalid(reader, key, "must be a whole number greater than 0", text)
            }
            return int
        }
        return nil
    }

    private static func invalid(_ reader: ConfigReader, _ key: ConfigKey, _ rule: String, _ text: String) -> SagaError {
        SagaError(
            .invalidConfiguration,
            "RabbitMQ configuration value \(reader.sagaDescribe(key)) \(rule), not '\(text)'",
            recoverySuggestion: "fix or remove the setting")
    }
}
