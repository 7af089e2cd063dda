import Foundation
import Logging
import PostgresNIO
import SagaCore

/// The store's own client and TLS to PostgreSQL: the client's pool settings, what each
/// `sslmode` checks, the warning when `prefer` falls back to plaintext, and connect errors that
/// say what TLS refused.
extension PostgresSagaStore {
    /// The configuration of the store's own postgres-nio client: TLS as ``Configuration/tls``
    /// says, the pool's size and its keep-alive.
    static func clientConfiguration(_ configuration: Configuration) -> PostgresClient.Configuration {
        let clientTLS: PostgresClient.Configuration.TLS
        switch configuration.tls {
        case .disable: clientTLS = .disable
        case .prefer: clientTLS = .prefer(tlsConfiguration(configuration))
        case .require, .verifyCA, .verifyFull: clientTLS = .require(tlsConfiguration(configuration))
        }
        var client = PostgresClient.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.username,
            password: configuration.password, database: configuration.database, tls: clientTLS
        )
        client.options.connectTimeout = configuration.connectTimeout
        client.options.additionalStartupParameters = [("application_name", configuration.applicationName)]
        client.options.maximumConnections = max(1, configuration.maximumConnections)
        // No connections kept open (postgres-nio's `minimumConnections`, 0): with any, its
        // pool 1.33 fails a precondition when a statement asks for a connection while a kept one
        // is closing (seen when the server restarts), which ends the process.
        client.options.keepAliveBehavior = configuration.keepAliveInterval.flatMap {
            $0 > .zero ? PostgresClient.Configuration.Options.KeepAliveBehavior(frequency: $0) : nil
        }
        return client
    }

    /// The TLS settings for a mode other than `disable`; does no I/O (a CA file is read when a
    /// connection is made).
    static func tlsConfiguration(_ configuration: Configuration) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        let hasCA = configuration.caCertificateFile != nil
        switch configuration.tls {
        case .disable, .prefer, .require:
            // libpq: without a root certificate, prefer and require encrypt but check nothing;
            // with one, they check the chain like verify-ca.
            tls.certificateVerification = hasCA ? .noHostnameVerification : .none
        case .verifyCA:
            tls.certificateVerification = .noHostnameVerification
        case .verifyFull:
            tls.certificateVerification = .fullVerification
        }
        if let file = configuration.caCertificateFile {
            tls.trustRoots = .file(file)
        }
        return tls
    }

    /// The TLS context for the store's own start-up connection, reading the CA file.
    ///
    /// - Throws: ``SagaCore/SagaError`` `invalidConfiguration` naming the CA file when it cannot
    ///   be read or holds no certificate.
    static func tlsContext(_ configuration: Configuration) throws -> NIOSSLContext {
        if let file = configuration.caCertificateFile, !FileManager.default.isReadableFile(atPath: file) {
            throw SagaError(
                .invalidConfiguration,
                "cannot read the CA file '\(file)' (sslrootcert) for TLS to PostgreSQL at \(configuration.location)",
                recoverySuggestion: "point sslrootcert (configuration key tls.ca.file) at a readable PEM file")
        }
        do {
            return try NIOSSLContext(configuration: tlsConfiguration(configuration))
        } catch {
            let what = configuration.caCertificateFile.map { "the CA file '\($0)' (sslrootcert)" } ?? "the system's CAs"
            throw SagaError(
                .invalidConfiguration,
                "cannot set up TLS to PostgreSQL at \(configuration.location) with \(what): \(error)",
                recoverySuggestion: "sslrootcert (configuration key tls.ca.file) must be a PEM file of CA certificates",
                underlying: error)
        }
    }

    /// Logs a warning when a `prefer` connection ended up in plaintext. postgres-nio does not say
    /// whether it negotiated TLS, so the server is asked (`pg_stat_ssl`).
    static func warnIfPlaintext(_ connection: PostgresConnection, location: String, logger: Logger) async {
        var metadata: Logger.Metadata = ["store.location": "\(location)", "store.sslmode": "prefer"]
        do {
            let rows = try await PostgresStatement.run(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", on: connection, logger: logger)
            var encrypted = false
            for row in rows.rows { encrypted = try row.decode(Bool.self) }
            if encrypted {
                logger.debug("the connection to PostgreSQL is encrypted (TLS)", metadata: metadata)
                return
            }
        } catch {
            metadata["error"] = "\(describe(error))"
            logger.warning(
                """
                cannot tell whether the connection to PostgreSQL at \(location) is encrypted (sslmode=prefer \
                may have fallen back to plaintext); to require TLS, set sslmode=require, or verify-full with \
                sslrootcert=<CA file> (configuration keys tls and tls.ca.file)
                """, metadata: metadata)
            return
        }
        logger.warning(
            """
            the connection to PostgreSQL at \(location) is NOT encrypted: sslmode=prefer and the server does not \
            offer TLS, so the password exchange and saga data travel in plaintext; to require TLS, set \
            sslmode=require, or verify-full with sslrootcert=<CA file> (configuration keys tls and tls.ca.file)
            """, metadata: metadata)
    }

    /// The error for a start-up connection that failed: what TLS refused when it was TLS,
    /// otherwise the server's or the network's reason. Never holds the password.
    static func connectError(_ error: any Error, configuration: Configuration) -> SagaError {
        let location = configuration.location
        if let (reason, remedy) = tlsFailure(error, configuration: configuration) {
            return SagaError(
                .storeUnavailable, "TLS to PostgreSQL at \(location) failed: \(reason)",
                recoverySuggestion: remedy, underlying: error)
        }
        return SagaError(
            .storeUnavailable,
            "cannot connect to PostgreSQL at \(location): \(describe(error))",
            recoverySuggestion: "check that the server runs and that host, port, user, password and database are right",
            underlying: error
        )
    }

    /// Why TLS failed, and what to do, when `error` is a TLS failure.
    private static func tlsFailure(
        _ error: any Error, configuration: Configuration
    ) -> (reason: String, remedy: String)? {
        let mode = configuration.tls.rawValue
        let setCA = "set sslrootcert (configuration key tls.ca.file) to the PEM file of the CA that signed it"
        let psql = error as? PSQLError
        if psql?.code == .sslUnsupported {
            return (
                "the server does not offer TLS, and sslmode=\(mode) requires it",
                "turn TLS on in the server (ssl = on, with ssl_cert_file and ssl_key_file); only on a network you "
                    + "trust, use sslmode=prefer or disable"
            )
        }
        let underlying = psql?.underlying ?? error
        if let extra = underlying as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return (
                "the server's certificate does not name the host '\(configuration.host)' (sslmode=\(mode) checks the "
                    + "host name)",
                "connect with a host name or address the certificate names (its subjectAltName), or issue it for "
                    + "'\(configuration.host)'; sslmode=verify-ca checks the CA but not the name"
            )
        }
        if let tlsError = underlying as? NIOSSLError {
            let ca = configuration.caCertificateFile.map { "the CA in '\($0)' (sslrootcert)" } ?? "the system's CAs"
            if case .handshakeFailed(let detail) = tlsError, "\(detail)".contains("CERTIFICATE_VERIFY_FAILED") {
                return (
                    "the server's certificate could not be verified against \(ca) (it is not signed by it, or it "
                        + "expired or is not valid yet)",
                    configuration.caCertificateFile == nil
                        ? setCA
                        : "check that sslrootcert is the CA that signed "
                            + "the server's certificate and that the certificate is current"
                )
            }
            return ("the TLS handshake failed: \(tlsError)", "check the server's TLS settings and certificate")
        }
        if underlying is BoringSSLError {
            return ("the TLS handshake failed: \(underlying)", "check the server's TLS settings and certificate")
        }
        return nil
    }
}
