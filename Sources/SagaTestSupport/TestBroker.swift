import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The RabbitMQ broker integration tests and benchmarks use.
///
/// The URL comes from the `AMQP_URL` environment variable, or is `amqp://guest:guest@127.0.0.1:5672/%2F`
/// (the broker `scripts/rabbitmq.sh start` runs). When no broker answers, ``availableURL()`` throws if `CI` is
/// set — integration tests must fail in CI, never skip — and otherwise returns `nil` after printing how to start
/// one, so a developer without a broker can still run the unit tests.
public enum TestBroker {
    /// The URL of the broker started by `scripts/rabbitmq.sh`.
    public static let defaultURL = "amqp://guest:guest@127.0.0.1:5672/%2F"

    /// `AMQP_URL` or ``defaultURL``.
    public static var url: String {
        if let url = ProcessInfo.processInfo.environment["AMQP_URL"], !url.isEmpty { return url }
        return defaultURL
    }

    /// Whether the `CI` environment variable is set (to anything but empty, `0` or `false`).
    public static var isCI: Bool {
        guard let value = ProcessInfo.processInfo.environment["CI"] else { return false }
        return !["", "0", "false"].contains(value.lowercased())
    }

    /// The broker's URL when it accepts TCP connections.
    ///
    /// - Returns: `nil` when no broker answers and `CI` is not set (a message says how to start one).
    /// - Throws: ``TestBrokerUnavailable`` when no broker answers and `CI` is set.
    public static func availableURL() throws -> String? {
        let url = self.url
        let (host, port) = hostAndPort(url)
        if isReachable(host: host, port: port) { return url }
        let message =
            "No RabbitMQ broker answers at \(host):\(port) (AMQP_URL=\(ProcessInfo.processInfo.environment["AMQP_URL"] ?? "unset")). "
            + "Start one with `scripts/rabbitmq.sh start` or point AMQP_URL at one."
        if isCI { throw TestBrokerUnavailable(message: message + " CI is set, so the integration tests fail.") }
        warnOnce(message + " Skipping the RabbitMQ tests.")
        return nil
    }

    /// `true` when a broker answers, or when `CI` is set (so that the tests run and fail instead of skipping).
    /// Use it as `.enabled(if: TestBroker.shouldRunIntegrationTests)`.
    public static var shouldRunIntegrationTests: Bool {
        if isCI { return true }
        let (host, port) = hostAndPort(url)
        if isReachable(host: host, port: port) { return true }
        warnOnce("No RabbitMQ broker answers at \(host):\(port); skipping RabbitMQ tests (scripts/rabbitmq.sh start).")
        return false
    }

    /// Runs `scripts/rabbitmq.sh` with `arguments` (for example `["ctl", "close_all_connections", "test"]`) and
    /// returns its output. With `port`, the script manages the private broker on that port (and ignores
    /// `AMQP_URL`): tests that restart a broker use one of their own, so they do not disturb other tests.
    ///
    /// The script runs on a thread of its own (starting a broker takes seconds; the cooperative pool must not
    /// wait for it), with `posix_spawn` and `waitpid` (Foundation's `Process.waitUntilExit` can miss the exit of
    /// a script that leaves a daemon behind).
    @discardableResult
    public static func runScript(_ arguments: [String], port: Int? = nil) async throws -> String {
        var environment = ProcessInfo.processInfo.environment
        if let port {
            environment["RABBITMQ_PORT"] = String(port)
            environment["AMQP_URL"] = nil
        }
        let command = ["/bin/bash", scriptPath] + arguments
        let env = environment.map { "\($0.key)=\($0.value)" }
        let (status, output) = await withCheckedContinuation { (done: CheckedContinuation<(Int32, String), Never>) in
            let thread = Thread { done.resume(returning: spawnAndWait(command, environment: env)) }
            thread.start()
        }
        guard status == 0 else {
            throw TestBrokerUnavailable(
                message: "scripts/rabbitmq.sh \(arguments.joined(separator: " ")) failed (exit \(status)): \(output)")
        }
        return output
    }

    /// Runs a command to completion; returns its exit status (-1 when it could not start or was killed) and its
    /// standard output and error, interleaved.
    static func spawnAndWait(_ command: [String], environment: [String]) -> (Int32, String) {
        let outputPath = NSTemporaryDirectory() + "sagakit-script-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process goes along (bash closes every other descriptor before it
        // runs the command): a server the script starts outlives the test process, and with the
        // test's sockets it would keep their database sessions, and any advisory lock they hold,
        // open for as long as it runs.
        let closeOthers = #"for fd in /proc/$$/fd/*; do fd=${fd##*/}; (( fd > 2 )) && eval "exec $fd>&-"; done; exec "$@""#
        let argv = (["/bin/bash", "-c", closeOthers, "bash"] + command).map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/bash", &actions, nil, argv, envp) == 0 else { return (-1, "cannot start \(command[0])") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let exited = status & 0x7f == 0
        return (exited ? (status >> 8) & 0xff : -1, output)
    }

    /// The URL of the private broker `runScript(["start"], port: port)` starts.
    public static func privateBrokerURL(port: Int) -> String {
        "amqp://guest:guest@127.0.0.1:\(port)/%2F"
    }

    /// The path of `scripts/rabbitmq.sh` in this checkout.
    public static var scriptPath: String {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.appendingPathComponent("scripts/rabbitmq.sh").path
    }

    /// Host and port of an `amqp://` URL (5672 when it names none).
    public static func hostAndPort(_ url: String) -> (host: String, port: Int) {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") { rest = rest[scheme.upperBound...] }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]) {
            return (String(rest[..<colon]), port)
        }
        return (rest.isEmpty ? "127.0.0.1" : String(rest), 5672)
    }

    /// Whether a TCP connection to `host:port` succeeds within `timeout`.
    public static func isReachable(host: String, port: Int, timeout: Duration = .seconds(2)) -> Bool {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
            hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(first) }
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return true }
            guard errno == EINPROGRESS else { continue }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let millis = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&pfd, 1, millis) == 1 else { continue }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 { return true }
        }
        return false
    }

    private static let warned = Mutex(false)

    private static func warnOnce(_ message: String) {
        let first = warned.withLock { warned in
            defer { warned = true }
            return !warned
        }
        if first { print("⚠️ \(message)") }
    }
}

/// No broker answers where the tests expect one (thrown only when `CI` is set).
public struct TestBrokerUnavailable: Error, CustomStringConvertible {
    /// What is missing and how to fix it.
    public var message: String
    /// The message.
    public var description: String { message }
}
