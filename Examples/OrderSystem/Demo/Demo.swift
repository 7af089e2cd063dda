import ArgumentParser
import Dispatch
import Foundation
import OrderSystemSupport
import Participant
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The demo driver: starts the example order system as separate processes, runs a batch of
/// order sagas through it, and checks the invariants against every service's own database.
@main
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sagakit-demo",
        abstract: "Runs the example order system and checks its invariants.",
        discussion: """
            Starts inventory-service, payment-service and shipping-service (each its own process, \
            logging to <data dir>/logs), then order-service, which places the orders and shows \
            progress, and whose fraud desk approves (or, --fraud-reject-rate of them, rejects) the \
            large orders that wait for a fraud review. When every saga has finished it stops the \
            services, reads their databases and checks that stock is conserved, that compensated \
            orders were refunded and not shipped, that no large order shipped unreviewed, and that \
            every saga finished. Exits non-zero when a check fails.

            With --manual-review nobody approves the large orders but you: run \
            `order-saga list --status waiting` and `order-saga signal <id> fraud.approved --by <name>` \
            (with SAGAKIT_STORE_URL set to the store the demo prints) while it runs; an order nobody \
            approves is compensated when its wait times out (5 minutes).

            Use scripts/demo.sh (or `make demo`), which also starts the broker and builds.
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "How many order sagas to run.")
    var sagas = 500

    @Option(help: "How many sagas may be in flight at once.")
    var concurrency = 50

    @Option(help: "Share of orders the payment service declines (0…1).")
    var declineRate = 0.1

    @Option(help: "Share of orders the customer cancels shortly after placing them (0…1); before the pivot they are compensated.")
    var cancelRate = 0.05

    @Option(help: "Share of shipping attempts that fail transiently and are retried forward (0…1).")
    var shippingFailureRate = 0.05

    @Option(help: "Share of orders above the fraud review threshold (0…1): they wait for a fraud review.")
    var largeOrderRate = 0.1

    @Option(help: "Share of large orders the fraud desk rejects (0…1, deterministic by order id); it approves the others.")
    var fraudRejectRate = 0.2

    @Flag(help: "No fraud desk: approve the large orders yourself with `order-saga signal <id> fraud.approved --by <name>`.")
    var manualReview = false

    @Option(help: "Instances of each participant service, competing on its queue.")
    var instances = 1

    @Flag(help: "Kill -9 a random service now and then during the run, and restart it.")
    var chaos = false

    @Option(help: "Seconds between chaos kills.")
    var chaosInterval = 3.0

    @Option(help: "Give up after this many seconds.")
    var timeout = 600

    @Flag(help: "Keep the databases of earlier runs (by default the demo starts from empty ones).")
    var keepData = false

    func validate() throws {
        guard sagas >= 1 else { throw ValidationError("--sagas must be at least 1") }
        guard (0...1).contains(declineRate), (0...1).contains(shippingFailureRate), (0...1).contains(cancelRate),
            (0...1).contains(largeOrderRate), (0...1).contains(fraudRejectRate)
        else {
            throw ValidationError("rates are between 0 and 1")
        }
        guard shippingFailureRate < 1 else { throw ValidationError("--shipping-failure-rate 1 would never ship anything") }
        guard (1...8).contains(instances) else { throw ValidationError("--instances must be between 1 and 8") }
    }

    func run() async throws {
        var configuration = try connection.configuration()
        if connection.logLevel == nil, ProcessInfo.processInfo.environment["SAGAKIT_LOG_LEVEL"] == nil {
            configuration.logLevel = .info
        }
        // Quick recovery for the demo: stalled sagas are re-sent after 20 s instead of 15 min.
        configuration.reaper = ReaperConfiguration(pollInterval: .seconds(5), stalledThreshold: .seconds(20), maxReapAttempts: 5)
        ConsoleLogHandler.bootstrap(level: .warning)
        let logger = Logger(label: "demo")
        let supervisor = Supervisor()
        supervisor.installSignalHandlers()

        let runID = "demo-" + String(UUID().uuidString.lowercased().prefix(6))
        let logDirectory = configuration.dataPath("logs")
        if !keepData { try resetLocalData(configuration) }
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)

        say(
            "SagaKit demo: \(sagas) order sagas, decline rate \(percent(declineRate)), shipping failures \(percent(shippingFailureRate)), \(instances) instance(s) per service\(chaos ? ", chaos on" : "")"
        )
        say(
            "  large orders \(percent(largeOrderRate)) (amount > \(Int(OrderSaga.fraudReviewThreshold))): "
                + (manualReview
                    ? "fraud review by hand (--manual-review), compensated after \(OrderSaga.fraudReviewTimeoutText) without approval"
                    : "the fraud desk approves them, rejects \(percent(fraudRejectRate))"))
        say("  broker \(configuration.redactedAMQPURL) · store \(configuration.redactedStoreURL) · logs \(logDirectory)")

        try await prepareBroker(configuration, logger: logger)

        let binDirectory = Self.executableDirectory()
        var environment = configuration.processEnvironment
        environment["SAGAKIT_DECLINE_RATE"] = String(declineRate)
        environment["SAGAKIT_SHIPPING_FAILURE_RATE"] = String(shippingFailureRate)
        environment["NO_COLOR"] = "1"
        environment["SAGAKIT_METRICS_PORT"] = nil  // one port cannot serve every child: give ports by hand

        var participants: [ServiceSpec] = []
        for service in ["inventory", "payment", "shipping"] {
            for number in 1...instances {
                let instance = "\(service)-\(number)"
                participants.append(
                    ServiceSpec(
                        name: instance, executable: "\(binDirectory)/\(service)-service", arguments: ["--instance", instance],
                        logPath: "\(logDirectory)/\(instance).log"))
            }
        }
        for spec in participants {
            try supervisor.start(spec, environment: environment)
        }
        say("  started \(participants.map(\.name).joined(separator: ", "))")

        let reportPath = configuration.dataPath("report-\(runID).json")
        var orderEnvironment = environment
        orderEnvironment["SAGAKIT_LOG_LEVEL"] = "warning"
        orderEnvironment.removeValue(forKey: "NO_COLOR")
        let order = ServiceSpec(
            name: "order-service", executable: "\(binDirectory)/order-service",
            arguments: [
                "--instance", "order-1", "--count", "\(sagas)", "--concurrency", "\(concurrency)", "--run-id", runID,
                "--report", reportPath, "--timeout", "\(timeout)", "--cancel-rate", "\(cancelRate)",
                "--large-order-rate", "\(largeOrderRate)", "--fraud-reject-rate", "\(fraudRejectRate)",
            ] + (manualReview ? ["--manual-review"] : []),
            logPath: nil)
        let orderProcess = try supervisor.start(order, environment: orderEnvironment)
        if manualReview {
            say("  approve the waiting orders from another terminal, on this demo's store (and broker: AMQP_URL, when not the local one):")
            say("    export SAGAKIT_STORE_URL='\(configuration.redactedStoreURL)'")
            say("    swift run order-saga list --status waiting")
            say("    swift run order-saga signal <id> \(OrderSaga.Signal.fraudApproved) --by <your name>")
        }

        // Watch: participants must stay up (unless chaos killed them); chaos kills and restarts.
        let clock = ContinuousClock()
        var nextChaos = clock.now + .seconds(chaosInterval)
        var kills: [String] = []
        while orderProcess.isRunning {
            if supervisor.interrupted { break }
            for spec in participants where !supervisor.isRunning(spec.name) {
                let status = supervisor.exitStatus(spec.name)
                sayOverProgress(
                    "  ! \(spec.name) exited (status \(status.map(String.init) ?? "?")); restarting it — see \(spec.logPath ?? "")")
                try supervisor.start(spec, environment: environment)
            }
            if chaos, clock.now >= nextChaos, let victim = participants.randomElement() {
                supervisor.kill(victim.name)
                kills.append(victim.name)
                sayOverProgress("  ☠ chaos: kill -9 \(victim.name); restarting it in 1 s")
                try await Task.sleep(for: .seconds(1))
                try supervisor.start(victim, environment: environment)
                nextChaos = clock.now + .seconds(chaosInterval)
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        if supervisor.interrupted {
            say("\ninterrupted: stopping the services")
            await supervisor.stopAll()
            throw ExitCode(130)
        }
        let orderStatus = orderProcess.poll() ?? -1
        say("  stopping the services")
        await supervisor.stopAll()
        guard FileManager.default.fileExists(atPath: reportPath) else {
            say("order-service ended with status \(orderStatus) and wrote no report; see the logs in \(logDirectory)")
            throw ExitCode(1)
        }
        let report = try JSONDecoder().decode(BatchReport.self, from: Data(contentsOf: URL(fileURLWithPath: reportPath)))
        let outcome = try await Verifier(
            configuration: configuration, declineRate: declineRate, fraudRejectRate: fraudRejectRate, logger: logger
        ).verify(report)
        print(outcome.summary(sagas: sagas, kills: kills, store: configuration.storeURL, logs: logDirectory))
        if !outcome.passed { throw ExitCode(1) }
    }

    /// Deletes the services' databases, the demo's SQLite saga store and old logs.
    func resetLocalData(_ configuration: AppConfiguration) throws {
        let manager = FileManager.default
        var names = ["inventory.db", "payment.db", "shipping.db"]
        if configuration.storeURL.lowercased().hasPrefix("sqlite:") {
            let path = configuration.storeURL.replacingOccurrences(of: "sqlite://", with: "").replacingOccurrences(of: "sqlite:", with: "")
            if path.hasPrefix(configuration.dataDirectory + "/") {
                names.append(String(path.dropFirst(configuration.dataDirectory.count + 1)))
            }
        }
        for name in names {
            for suffix in ["", "-wal", "-shm"] {
                try? manager.removeItem(atPath: configuration.dataPath(name + suffix))
            }
        }
        try? manager.removeItem(atPath: configuration.dataPath("logs"))
        if let reports = try? manager.contentsOfDirectory(atPath: configuration.dataDirectory) {
            for name in reports where name.hasPrefix("report-") { try? manager.removeItem(atPath: configuration.dataPath(name)) }
        }
    }

    /// Empties the services' and the delay queues (their messages belong to earlier runs), then
    /// declares every queue the services use, so that orders can be placed before the services
    /// have finished starting.
    func prepareBroker(_ configuration: AppConfiguration, logger: Logger) async throws {
        let bus = try await ParticipantApp.connectBus(configuration, name: "sagakit-demo", logger: logger, attempts: 5)
        let topology = configuration.topology
        let definition = OrderSaga.definition
        let services: [(String, [String])] = [
            ("inventory", [OrderSaga.Command.reserve, OrderSaga.Command.release]),
            ("payment", [OrderSaga.Command.charge, OrderSaga.Command.refund]),
            ("shipping", [OrderSaga.Command.ship]),
        ]
        precondition(Set(services.flatMap(\.1)) == Set(definition.commands))
        if !keepData {
            for (service, _) in services { try await bus.deleteQueue(topology.queue(forService: service)) }
            for level in topology.delayLevels { try await bus.deleteQueue(topology.delayName(seconds: level)) }
        }
        for (service, commands) in services {
            try await bus.declare(topology.topology(forService: service, commands: commands))
        }
        await bus.shutdown()
    }

    static func executableDirectory() -> String {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: path).deletingLastPathComponent().path
    }
}

func percent(_ rate: Double) -> String { String(format: "%g%%", rate * 100) }

func say(_ text: String) {
    print(text)
    fflush(nil)
}

/// Prints a line above order-service's updating progress line.
func sayOverProgress(_ text: String) {
    print(isatty(STDOUT_FILENO) == 1 ? "\r\u{1B}[2K" + text : text)
    fflush(nil)
}

/// What order-service writes with `--report` (its own copy of the type: executables share none).
struct BatchReport: Codable {
    var runID: String
    var ids: [String]
    /// Orders whose cancellation was accepted (compensated on the customer's request).
    var cancelled: [String]
    /// Large orders the fraud desk approved (their `fraud.approved` signal was delivered).
    var approved: [String]
    /// Large orders the fraud desk rejected (their compensation was accepted).
    var rejected: [String]
    /// Whether the fraud desk was off (`--manual-review`): operators decided.
    var manualReview: Bool
    var statistics: RunStatistics
}

struct ServiceSpec: Sendable {
    var name: String
    var executable: String
    var arguments: [String]
    var logPath: String?
}

/// Kept alive for the life of the process (a released source stops delivering).
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []

/// The child processes, and what SIGINT/SIGTERM do to them.
final class Supervisor: Sendable {
    private let children = Mutex<[String: ChildProcess]>([:])
    private let interruptedFlag = Mutex(false)

    var interrupted: Bool { interruptedFlag.withLock { $0 } }

    /// On SIGINT/SIGTERM: remember it; the main loop stops the children. A second signal stops
    /// them at once with SIGKILL.
    func installSignalHandlers() {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                let again = interruptedFlag.withLock { flag in
                    defer { flag = true }
                    return flag
                }
                if again {
                    for child in children.withLock({ Array($0.values) }) { child.send(SIGKILL) }
                    exit(130)
                }
                // Forward to the children (they may not share our process group).
                for child in children.withLock({ Array($0.values) }) { child.send(SIGINT) }
            }
            source.resume()
            signalSources.append(source)
        }
    }

    @discardableResult
    func start(_ spec: ServiceSpec, environment: [String: String]) throws -> ChildProcess {
        guard FileManager.default.isExecutableFile(atPath: spec.executable) else {
            throw DemoError("\(spec.executable) is missing: build it first (swift build) or run scripts/demo.sh")
        }
        let child = try ChildProcess.spawn(
            name: spec.name, executable: spec.executable, arguments: spec.arguments, environment: environment, logPath: spec.logPath)
        children.withLock { $0[spec.name] = child }
        return child
    }

    func isRunning(_ name: String) -> Bool { children.withLock { $0[name] }?.isRunning ?? false }
    func exitStatus(_ name: String) -> Int32? { children.withLock { $0[name] }?.poll() }
    func kill(_ name: String) { children.withLock { $0[name] }?.send(SIGKILL) }

    func stopAll() async {
        let all = children.withLock { Array($0.values) }
        await withTaskGroup(of: Void.self) { group in
            for child in all { group.addTask { await child.stop(grace: .seconds(15)) } }
        }
    }
}
