import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process started with `posix_spawn`, in the driver's process group (so that Ctrl-C in
/// the terminal, or `kill -- -<pgid>`, reaches it too), with its output appended to a log file or
/// inherited.
final class ChildProcess: Sendable {
    let name: String
    let pid: pid_t
    private let exitStatus = Mutex<Int32?>(nil)

    private init(name: String, pid: pid_t) {
        self.name = name
        self.pid = pid
    }

    /// Starts `executable` with `arguments` and `environment`; output goes to `logPath`, or to the
    /// driver's own stdout/stderr when `nil`.
    static func spawn(name: String, executable: String, arguments: [String], environment: [String: String], logPath: String?) throws
        -> ChildProcess
    {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let logPath {
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw DemoError("could not start \(name) (\(executable)): \(String(cString: strerror(result)))")
        }
        return ChildProcess(name: name, pid: pid)
    }

    /// The exit status when the process has ended (reaping it), `nil` while it runs. Negative
    /// values are the signal that ended it.
    func poll() -> Int32? {
        exitStatus.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            let result = waitpid(pid, &raw, WNOHANG)
            guard result == pid else {
                if result < 0 && errno == ECHILD { status = -1 }
                return status
            }
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
            let signal = raw & 0x7f
            status = signal == 0 ? (raw >> 8) & 0xff : -signal
            return status
        }
    }

    var isRunning: Bool { poll() == nil }

    func send(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Waits until the process ends or `timeout` passes; returns whether it ended.
    @discardableResult
    func wait(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return true
    }

    /// SIGTERM, then SIGKILL after `grace`.
    func stop(grace: Duration) async {
        send(SIGTERM)
        if await wait(timeout: grace) { return }
        send(SIGKILL)
        await wait(timeout: .seconds(5))
    }
}

struct DemoError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
