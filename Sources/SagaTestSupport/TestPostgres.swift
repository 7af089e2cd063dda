public import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The PostgreSQL server that tests and benchmarks use.
///
/// Where it is, in order:
/// 1. `POSTGRES_URL`, when set;
/// 2. the server started by `scripts/postgres.sh` (its URL is in `.local/postgres/url` in the
///    package); when no such server answers, `scripts/postgres.sh start` is run once to start one
///    (it installs PostgreSQL with apt-get when missing). Set `SAGAKIT_NO_POSTGRES_START=1` to
///    prevent that.
///
/// When no server answers: with `CI` set, ``url()`` throws (tests must fail in CI, never skip);
/// otherwise it returns `nil` after printing why, and the tests skip PostgreSQL.
public enum TestPostgres {
    /// Why PostgreSQL is not available.
    public struct Unavailable: Error, CustomStringConvertible {
        /// What went wrong.
        public var description: String
    }

    private static let resolved = Mutex<Result<String?, Unavailable>?>(nil)

    /// The package root (found from this file's path).
    public static var packageRoot: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // SagaTestSupport
            .deletingLastPathComponent()  // Sources
            .deletingLastPathComponent()
    }

    /// The URL of a PostgreSQL that answers, or `nil` (after printing why) when there is none
    /// outside CI.
    /// - Throws: ``Unavailable`` in CI (`CI` set) when no server answers.
    public static func url() async throws -> String? {
        if let result = resolved.withLock({ $0 }) { return try result.get() }
        let result = await resolve()
        resolved.withLock { $0 = result }
        return try result.get()
    }

    /// The URL of a PostgreSQL that answers.
    /// - Throws: ``Unavailable`` when there is none (in CI or not).
    public static func requireURL() async throws -> String {
        guard let url = try await url() else {
            throw Unavailable(description: "PostgreSQL is not available (see the message above)")
        }
        return url
    }

    private static func resolve() async -> Result<String?, Unavailable> {
        let environment = ProcessInfo.processInfo.environment
        let inCI = !(environment["CI"] ?? "").isEmpty
        func unavailable(_ why: String) -> Result<String?, Unavailable> {
            if inCI {
                return .failure(Unavailable(description: "PostgreSQL is required in CI (CI is set) but \(why)"))
            }
            print("⚠️ skipping PostgreSQL tests: \(why)")
            return .success(nil)
        }

        if let url = environment["POSTGRES_URL"], !url.isEmpty {
            guard let (host, port) = hostAndPort(url) else {
                return unavailable("POSTGRES_URL is not a postgres:// URL")
            }
            return answers(host: host, port: port)
                ? .success(url) : unavailable("nothing answers at \(host):\(port) (from POSTGRES_URL)")
        }

        let urlFile = packageRoot.appendingPathComponent(".local/postgres/url")
        if let url = readURL(urlFile), let (host, port) = hostAndPort(url), answers(host: host, port: port) {
            return .success(url)
        }
        guard (environment["SAGAKIT_NO_POSTGRES_START"] ?? "").isEmpty else {
            return unavailable("no server of scripts/postgres.sh answers and SAGAKIT_NO_POSTGRES_START is set")
        }
        let script = packageRoot.appendingPathComponent("scripts/postgres.sh")
        let status = await run(script.path, ["start"])
        guard status == 0 else {
            return unavailable(
                "`scripts/postgres.sh start` failed with status \(status); set POSTGRES_URL to use another server")
        }
        if let url = readURL(urlFile), let (host, port) = hostAndPort(url), answers(host: host, port: port) {
            return .success(url)
        }
        return unavailable("`scripts/postgres.sh start` ran but no server answers; see .local/postgres/postgres.log")
    }

    private static func readURL(_ file: URL) -> String? {
        guard let text = try? String(contentsOf: file, encoding: .utf8) else { return nil }
        let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return url.isEmpty ? nil : url
    }

    private static func hostAndPort(_ url: String) -> (String, Int)? {
        guard let components = URLComponents(string: url), let host = components.host else { return nil }
        return (host, components.port ?? 5432)
    }

    /// Runs a program, its output going to ours, and returns its exit status.
    private static func run(_ path: String, _ arguments: [String]) async -> Int32 {
        await withCheckedContinuation { continuation in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [path] + arguments
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                continuation.resume(returning: -1)
            }
        }
    }

    /// Runs `scripts/postgres.sh` (`start`, `stop`, `url`) for a private server, with its data
    /// under `.local/postgres-private`: tests that stop and restart PostgreSQL use one of their
    /// own, so that they do not disturb other tests. `port` is used when the server is first
    /// created (a server of an earlier run keeps its port; `url` says which). Returns the script's
    /// output; throws when it fails.
    @discardableResult
    public static func privateServer(_ arguments: [String], port: Int) async throws -> String {
        var environment = ProcessInfo.processInfo.environment
        environment["POSTGRES_URL"] = nil
        environment["PGPORT"] = String(port)
        environment["SAGAKIT_PG_BASE"] = repositoryRoot.appendingPathComponent(".local/postgres-private").path
        let command = ["/bin/bash", repositoryRoot.appendingPathComponent("scripts/postgres.sh").path] + arguments
        let env = environment.map { "\($0.key)=\($0.value)" }
        let (status, output) = await withCheckedContinuation { (done: CheckedContinuation<(Int32, String), Never>) in
            // Starting a server takes seconds: not on the cooperative pool.
            let thread = Thread { done.resume(returning: TestBroker.spawnAndWait(command, environment: env)) }
            thread.start()
        }
        guard status == 0 else {
            throw ScriptFailure(
                description: "scripts/postgres.sh \(arguments.joined(separator: " ")) (port \(port)) failed (exit \(status)): \(output)")
        }
        return output
    }

    /// Runs `scripts/postgres-tls.sh` (`certs DIR`, `start PORT DIR`, `ssl PORT on|off`,
    /// `stop PORT`, `url PORT`): a private PostgreSQL with TLS and a test CA. Returns the script's
    /// output; throws when it fails.
    @discardableResult
    public static func tlsServer(_ arguments: [String]) async throws -> String {
        let command = ["/bin/bash", repositoryRoot.appendingPathComponent("scripts/postgres-tls.sh").path] + arguments
        let env = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let (status, output) = await withCheckedContinuation { (done: CheckedContinuation<(Int32, String), Never>) in
            // initdb and starting a server take seconds: not on the cooperative pool.
            let thread = Thread { done.resume(returning: TestBroker.spawnAndWait(command, environment: env)) }
            thread.start()
        }
        guard status == 0 else {
            throw ScriptFailure(
                description: "scripts/postgres-tls.sh \(arguments.joined(separator: " ")) failed (exit \(status)): \(output)")
        }
        return output
    }

    /// The checkout this file is in.
    static var repositoryRoot: URL {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }

    /// Whether a TCP connection to host:port succeeds (the same probe as the broker's).
    public static func answers(host: String, port: Int) -> Bool {
        TestBroker.isReachable(host: host, port: port)
    }
}

/// A helper script that failed, with its output.
public struct ScriptFailure: Error, CustomStringConvertible {
    /// What failed, with the script's output.
    public let description: String
}
