import Foundation
import SagaTestSupport
import Testing

/// Feeds malformed broker and store URLs that carry a known password to the real executables —
/// the `saga` tool and an example service's start-up — and checks that the password appears
/// nowhere in what they print (standard output and standard error), whatever the error.
@Suite("Secrets are never printed", .timeLimit(.minutes(5)))
struct SecretLeakTests {
    static let password = "Pw7SECRETzq"

    /// Passwords with every character that breaks naive URL parsing around the known secret.
    static let passwords = [
        password, "\(password)/x", "a?\(password)", "\(password)#frag", "x@\(password)", ":\(password):", "\(password)%zz",
    ]

    /// Malformed and well-formed URL shapes; `{P}` is replaced by a password.
    static let shapes = [
        "amqp://user:{P}@127.0.0.1:1/%2F", "amqp:/user:{P}@host", "amqp:user:{P}@host", "amqp//user:{P}@host",
        "amqp://user:{P}@host:notaport/",
        "amqp://user:{P}@:5672", "amqp://user:{P}@[::1/", "amqps://user:{P}@host:99999/v", "amqp://:{P}@host", "AMQP://USER:{P}@HOST",
        "postgres://u:{P}@127.0.0.1:1/db", "postgres:u:{P}@host", "postgres:/u:{P}@host/db", "postgresql://u:{P}@host:port/db",
        "postgres://u:{P}@host/db?sslmode=bogus", "sqlite://u:{P}@/tmp/x.db", "http://u:{P}@host", "u:{P}@host", "://u:{P}@host",
        "amqp://u:{P}@h1:1,h2:x/",
    ]

    static var urls: [String] {
        shapes.flatMap { shape in passwords.map { shape.replacingOccurrences(of: "{P}", with: $0) } }
    }

    @Test func theSagaToolNeverPrintsThePassword() async throws {
        let urls = Self.urls
        #expect(urls.count >= 140)
        var failures: [String] = []
        for url in urls {
            for arguments in [
                ["list", "--store-url", url], ["dlq", "list", "--amqp-url", url, "--store-url", "sqlite:///nonexistent.db"],
            ] {
                let (status, output) = try await run("saga", arguments: arguments, timeout: .seconds(60))
                if output.contains(Self.password) { failures.append("saga \(arguments.joined(separator: " ")) printed: \(output)") }
                if status == 0 { failures.append("saga \(arguments.joined(separator: " ")) succeeded with a malformed URL") }
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n"))")
    }

    @Test func aServiceStartingWithABadURLNeverPrintsThePassword() async throws {
        var failures: [String] = []
        // Two password shapes per URL shape: a URL that parses keeps the service retrying until
        // it is stopped, so every run here may take the whole timeout.
        let urls = Self.shapes.flatMap { shape in Self.passwords.prefix(2).map { shape.replacingOccurrences(of: "{P}", with: $0) } }
        for url in urls {
            for flag in ["--amqp-url", "--store-url"] {
                // A URL that parses but names no reachable server keeps the service retrying:
                // it is stopped after 1.5 s, and what it printed until then is checked.
                let (_, output) = try await run(
                    "inventory-service", arguments: [flag, url, "--data-dir", NSTemporaryDirectory() + "sagakit-leak"],
                    timeout: .milliseconds(1500))
                if output.contains(Self.password) { failures.append("inventory-service \(flag) \(url) printed: \(output)") }
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n"))")
    }

    /// A password in `--store-url` or `--amqp-url` is in the process list for every user of the
    /// machine while the command runs: the tool says so and where to put it instead (without
    /// the password); from the environment, or with RabbitMQ's public `guest`, it says nothing.
    @Test func theSagaToolWarnsOfAPasswordOnItsCommandLine() async throws {
        let store = "postgres://u:\(Self.password)@127.0.0.1:1/db"
        let (_, flagged) = try await run("saga", arguments: ["list", "--store-url", store], timeout: .seconds(60))
        #expect(flagged.contains("--store-url carries a password"), "\(flagged)")
        #expect(flagged.contains("SAGAKIT_STORE_URL"))
        #expect(!flagged.contains(Self.password))

        let amqp = "amqp://u:\(Self.password)@127.0.0.1:1/%2F"
        let (_, broker) = try await run(
            "saga", arguments: ["dlq", "list", "--amqp-url", amqp, "--store-url", "sqlite:///nonexistent.db"], timeout: .seconds(60))
        #expect(broker.contains("--amqp-url carries a password"), "\(broker)")
        #expect(!broker.contains("--store-url carries"))
        #expect(!broker.contains(Self.password))

        let (_, fromEnvironment) = try await run(
            "saga", arguments: ["list"], environment: ["SAGAKIT_STORE_URL": store], timeout: .seconds(60))
        let (_, guest) = try await run(
            "saga",
            arguments: ["dlq", "list", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2F", "--store-url", "sqlite:///nonexistent.db"],
            timeout: .seconds(60))
        for output in [fromEnvironment, guest] {
            #expect(!output.contains("carries a password"), "\(output)")
        }
    }

    /// Runs a product of this package; returns its exit status (-1 when it was stopped) and its
    /// output and error, interleaved.
    private func run(
        _ product: String, arguments: [String], environment: [String: String?] = [:], timeout: Duration
    ) async throws -> (Int32, String) {
        let cleared: [String: String?] = ["AMQP_URL": nil, "SAGAKIT_STORE_URL": nil, "POSTGRES_URL": nil, "SAGAKIT_LOG_LEVEL": "trace"]
        let run = await CommandRun.product(
            product, arguments, environment: cleared.merging(environment) { _, given in given }, timeout: timeout)
        return (run.timedOut ? -1 : run.status, run.stdout + run.stderr)
    }
}
