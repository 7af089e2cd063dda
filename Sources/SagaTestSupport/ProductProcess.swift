public import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// An executable of this package (`saga`, `ParticipantTestHost`, …) started by a test, with its
/// standard output and error captured in one file.
public final class ProductProcess: Sendable {
    /// The process.
    public let process: Process
    private let outputPath: String

    /// The directory of the package's built products: next to the test binary.
    public static var productsDirectory: URL {
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = testBinary.deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
        return directory
    }

    /// Starts the product `name` with `arguments`; `environment` entries replace the test's own
    /// (a `nil` value removes the variable).
    public init(_ name: String, _ arguments: [String], environment: [String: String?] = [:]) throws {
        process = Process()
        process.executableURL = Self.productsDirectory.appendingPathComponent(name)
        process.arguments = arguments
        var merged = ProcessInfo.processInfo.environment
        for (key, value) in environment { merged[key] = value }
        process.environment = merged
        outputPath = NSTemporaryDirectory() + "sagakit-\(name)-\(UUID().uuidString).log"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try handle.close()
    }

    deinit {
        if process.isRunning { process.terminate() }
        try? FileManager.default.removeItem(atPath: outputPath)
    }

    /// What the process printed so far (standard output and error, interleaved).
    public var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Waits until the output contains `text`; `false` when it did not within `timeout` or the
    /// process ended first.
    public func waitForOutput(containing text: String, timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if output.contains(text) { return true }
            if !process.isRunning { return output.contains(text) }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Waits for the process to end (terminating it after `timeout`); its exit status.
    public func waitForExit(timeout: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            // Polled, never `waitUntilExit()` (see ``CommandRun``): SIGTERM, then SIGKILL.
            process.terminate()
            for _ in 0..<100 where process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            for _ in 0..<100 where process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
        }
        return process.isRunning ? -1 : process.terminationStatus
    }
}
