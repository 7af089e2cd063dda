import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The participant processes: this executable re-launched with `--role`.
final class Children: Sendable {
    /// One participant process.
    struct Child: Sendable {
        let role: String
        let pid: pid_t
    }

    /// The processes, in launch order.
    let processes: [Child]
    private let ready: ReadyRoles
    private let inputs: [FileHandle]
    private let handles: [Process]

    private init(processes: [Child], ready: ReadyRoles, inputs: [FileHandle], handles: [Process]) {
        self.processes = processes
        self.ready = ready
        self.inputs = inputs
        self.handles = handles
    }

    /// The path of the running executable.
    static var executablePath: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return length > 0 ? String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    /// Launches one process per role; its stdout is read for `READY <role>`, its stderr is ours,
    /// its stdin a pipe that ``close()`` closes (the process then exits). `environment` is added
    /// to this process's own: URLs with passwords go there, not into `arguments`, which every
    /// user of the machine can read in the process list.
    static func launch(roles: [String], arguments: [String], environment: [String: String]) throws -> Children {
        let ready = ReadyRoles()
        var processes: [Child] = []
        var inputs: [FileHandle] = []
        var handles: [Process] = []
        for role in roles {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executablePath)
            process.arguments = ["--role", role] + arguments
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, given in given }
            let output = Pipe()
            let input = Pipe()
            process.standardOutput = output
            process.standardInput = input
            process.standardError = FileHandle.standardError
            try process.run()
            let reader = output.fileHandleForReading
            Thread.detachNewThread {
                var text = ""
                while true {
                    let data = reader.availableData
                    if data.isEmpty { return }
                    text += String(decoding: data, as: UTF8.self)
                    if text.contains("READY \(role)") {
                        ready.insert(role)
                        text = ""
                    }
                }
            }
            processes.append(Child(role: role, pid: process.processIdentifier))
            inputs.append(input.fileHandleForWriting)
            handles.append(process)
        }
        return Children(processes: processes, ready: ready, inputs: inputs, handles: handles)
    }

    /// Waits until every process printed `READY` (or one exited).
    func waitUntilReady(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ready.count < processes.count {
            if let dead = zip(processes, handles).first(where: { !$0.1.isRunning }) {
                throw BenchmarkError("the \(dead.0.role) process exited (status \(dead.1.terminationStatus))")
            }
            if ContinuousClock.now > deadline { throw BenchmarkError("the participants did not start within \(timeout)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Closes the processes' standard input (they exit) and waits for them.
    func close() {
        for input in inputs { try? input.close() }
        for process in handles { process.waitUntilExit() }
    }
}

/// The roles that said `READY`.
final class ReadyRoles: Sendable {
    private let roles = Mutex<Set<String>>([])
    /// Records a role.
    func insert(_ role: String) { roles.withLock { _ = $0.insert(role) } }
    /// How many roles are ready.
    var count: Int { roles.withLock { $0.count } }
}
