import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A command run to completion by ``CommandRun/run(_:_:environment:input:timeout:)``.
///
/// Tests run the package's executables (`saga`, …) with `posix_spawn` and `waitpid`, not
/// Foundation's `Process`: `Process.waitUntilExit()` spins the thread it runs on and has been seen
/// to miss a child's exit, after which two such waits held the whole two-thread pool of a loaded
/// machine, and every test with it.
public struct CommandRun: Sendable, CustomStringConvertible {
    /// The exit status, or -1 when a signal ended the command (``timedOut`` says whether it was
    /// this runner's).
    public let status: Int32
    /// What it wrote on standard output.
    public let stdout: String
    /// What it wrote on standard error.
    public let stderr: String
    /// Whether it was killed for running longer than its timeout.
    public let timedOut: Bool

    /// Status and both outputs, for a failed expectation.
    public var description: String { "exit \(status)\(timedOut ? " (timed out)" : "")\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }

    /// Runs `executable` with `arguments` and `environment` (the whole environment, as
    /// `KEY=value` pairs' dictionary), standard input from `input` (or `/dev/null`), and waits
    /// for it to end; after `timeout`, SIGTERM, then SIGKILL a second later. The wait runs on a
    /// thread of its own, not on one of the (two, on a two-core machine) threads of the
    /// cooperative pool that every test shares.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String], input: String? = nil,
        timeout: Duration = .seconds(120)
    ) async -> CommandRun {
        await withCheckedContinuation { (done: CheckedContinuation<CommandRun, Never>) in
            let thread = Thread {
                done.resume(returning: runBlocking(executable, arguments, environment: environment, input: input, timeout: timeout))
            }
            thread.start()
        }
    }

    /// ``run(_:_:environment:input:timeout:)`` on the calling thread.
    static func runBlocking(
        _ executable: String, _ arguments: [String], environment: [String: String], input: String?, timeout: Duration
    ) -> CommandRun {
        let base = NSTemporaryDirectory() + "sagakit-run-\(UUID().uuidString)"
        let (inPath, outPath, errPath) = (base + ".in", base + ".out", base + ".err")
        defer { for path in [inPath, outPath, errPath] { try? FileManager.default.removeItem(atPath: path) } }
        _ = FileManager.default.createFile(atPath: inPath, contents: Data((input ?? "").utf8))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, input == nil ? "/dev/null" : inPath, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, executable, &actions, nil, argv, envp) == 0 else {
            return CommandRun(
                status: -1, stdout: "", stderr: "cannot start \(executable): \(String(cString: strerror(errno)))", timedOut: false)
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var status: Int32 = 0
        var timedOut = false
        var signalled = ContinuousClock.Instant?.none
        while true {
            let ended = waitpid(pid, &status, WNOHANG)
            if ended == pid || (ended < 0 && errno != EINTR) { break }
            let now = ContinuousClock.now
            if now > deadline {
                if let sent = signalled {
                    if now > sent.advanced(by: .seconds(1)) { kill(pid, SIGKILL) }
                } else {
                    timedOut = true
                    signalled = now
                    kill(pid, SIGTERM)
                }
            }
            usleep(5_000)
        }
        let exited = status & 0x7f == 0
        return CommandRun(
            status: exited ? (status >> 8) & 0xff : -1, stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "", timedOut: timedOut)
    }

    /// Runs the product `name` of this package (built next to the test binary, see
    /// ``ProductProcess/productsDirectory``); `environment` entries replace the test's own (a
    /// `nil` value removes the variable).
    public static func product(
        _ name: String, _ arguments: [String], environment: [String: String?] = [:], input: String? = nil,
        timeout: Duration = .seconds(120)
    ) async -> CommandRun {
        var merged = ProcessInfo.processInfo.environment
        for (key, value) in environment { merged[key] = value }
        return await run(
            ProductProcess.productsDirectory.appendingPathComponent(name).path, arguments, environment: merged, input: input,
            timeout: timeout)
    }
}
