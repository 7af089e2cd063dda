import Foundation
import SagaTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// One participant process (`ParticipantTestHost`) of the crash and fault tests: killed, stopped
/// and waited for without blocking a thread.
final class HostProcess: Sendable {
    let service: String
    private let process: Process

    init(service: String, environment: [String: String]) throws {
        self.service = service
        let process = Process()
        process.executableURL = ProductProcess.productsDirectory.appendingPathComponent("ParticipantTestHost")
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { _, new in new }
        env["SERVICE"] = service
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.process = process
    }

    var isRunning: Bool { process.isRunning }

    /// How an ended process ended: "signal N" or "exit status N".
    var exitDescription: String {
        process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "exit status \(process.terminationStatus)"
    }

    /// Waits until the process ends by itself; the signal that ended it (0 for an exit), or
    /// `nil` when it still runs after `timeout`.
    func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning {
            if ContinuousClock.now > deadline { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationReason == .uncaughtSignal ? process.terminationStatus : 0
    }

    /// Whether the process has ended: Foundation saw it end, or the kernel already holds it as a
    /// zombie (dead, its sockets closed) that Foundation has not reaped yet: Foundation notices an
    /// exit late, or not at all, on a loaded machine.
    var hasEnded: Bool {
        guard process.isRunning else { return true }
        let pid = process.processIdentifier
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
        return state == "Z" || state == "X"
    }

    /// Waits until ``hasEnded``; `false` when the process still runs after `timeout`.
    private func waitUntilEnded(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while !hasEnded {
            if ContinuousClock.now > deadline { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return true
    }

    /// SIGKILL: the process dies wherever it is (mid-handler, between commit and publish, …).
    /// Returns once it is dead, without blocking a thread: `Process.waitUntilExit()` spins the
    /// thread it runs on, and once it missed an exit two of them held the whole two-thread pool
    /// of a loaded machine, and every test with it.
    func kill() async {
        Glibc.kill(process.processIdentifier, SIGKILL)
        _ = await waitUntilEnded(timeout: .seconds(5))
    }

    /// SIGTERM: graceful shutdown; SIGKILL when it has not exited after five seconds. Waits
    /// without blocking a thread (tests run side by side on a two-thread pool).
    func stop() async {
        guard !hasEnded else { return }
        process.terminate()
        if await !waitUntilEnded(timeout: .seconds(5)) { await kill() }
    }
}
