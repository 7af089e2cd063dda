// The like-for-like system benchmark (issue 13): the yardstick's saga shape with the three
// participants in separate processes, each step one write to its service's own table, and a
// starter that times each saga from its start to the terminal lifecycle event it hears.
//
//   swift build -c release --product SystemBenchmark
//   .build/release/SystemBenchmark --store postgres --sagas 2000 --concurrency 1 50 200
//
// The starter re-launches its own executable with `--role inventory|payment|shipping`.
import ArgumentParser
import Foundation
import Participant
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The command: the starter by default, a participant with `--role`.
@main
struct SystemBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "system-benchmark",
        abstract: "Runs M three-step sagas over three participant processes and prints sagas/s, latency, CPU per step and RSS."
    )

    @Option(help: "Run as this participant (inventory, payment or shipping) instead of the starter.") var role: String?
    @Option(help: "Sagas measured per configuration (after the warm-up).") var sagas = 2000
    @Option(help: "Sagas run before each measurement (not timed).") var warmup = 100
    @Option(parsing: .upToNextOption, help: "Sagas in flight (one measurement per value).") var concurrency: [Int] = [50]
    @Option(help: "Percentage of sagas whose shipment is declined (step 3 fails; they compensate).") var failPct = 0.0
    @Option(help: "postgres or sqlite.") var store = "postgres"
    @Option(help: "PostgreSQL store URL (default: POSTGRES_URL).") var postgresURL: String?
    @Option(help: "SQLite store file (default: a new file under /tmp).") var sqlitePath: String?
    @Option(help: "AMQP URL (default: AMQP_URL or the local broker).") var amqpURL: String?
    @Option(
        help: """
            Where a step's local write goes: transaction (with the saga's transition and outbox, one commit per step), \
            separate (its own transaction first, keyed by the idempotency key; PostgreSQL only) or none (no local write: \
            the saga's cost alone, for comparison).
            """)
    var local = "transaction"
    @Option(help: "Database of the services' tables with --local separate (default: SYSTEM_BENCHMARK_LOCAL_URL, else the store's).")
    var localURL: String?

    /// The environment variable `--local-url` defaults to (how the participant processes get it).
    static let localURLVariable = "SYSTEM_BENCHMARK_LOCAL_URL"

    @Option(help: "Prefetch of each participant.") var prefetch = 256
    @Option(help: "Deliveries each participant processes at once (default: the participant's default).") var handlers: Int?
    @Option(
        help:
            "Lifecycle events published: all, outcomes or terminal (the starter needs only the terminal ones, the only ones the peer publishes)."
    ) var events = "terminal"
    @Option(
        help:
            "Queue prefix (default: a new one per invocation, whose queues and exchanges are deleted at the end; a given prefix's are kept)."
    ) var prefix: String?
    @Option(help: "Repetition number: seeds the failures (12345 + run) and labels the JSON.") var run = 1
    @Option(help: "Label of the JSON lines.") var label = "sagakit-system"
    @Option(help: "synchronous_commit the PostgreSQL server runs with (a label; the store sets no session option).")
    var syncCommit = "on"
    @Option(help: "PostgreSQL data directory, to measure the server's CPU (default: PG_DATA).") var pgData: String?
    @Option(help: "Print each process's RSS (and its anonymous part) to stderr every this many seconds (a soak's curve; 0 = never).")
    var rssEvery = 0.0
    @Option(help: "A timeout on each step's action, in seconds (0 = none; to measure what step timeouts cost).")
    var stepTimeout = 0.0
    @Flag(help: "Print one JSON line per configuration (the yardstick's fields) instead of the table.") var json = false

    func validate() throws {
        guard ["postgres", "sqlite"].contains(store) else { throw ValidationError("--store must be postgres or sqlite") }
        guard ["transaction", "separate", "none"].contains(local) else {
            throw ValidationError("--local must be transaction, separate or none")
        }
        if local == "separate" && store != "postgres" { throw ValidationError("--local separate needs --store postgres") }
        guard SagaLifecycleEvent.Selection(rawValue: events) != nil, events != "none" else {
            throw ValidationError("--events must be all, outcomes or terminal")
        }
        if let role, BenchSaga.commands[role] == nil { throw ValidationError("--role must be inventory, payment or shipping") }
        guard sagas > 0, warmup >= 0, stepTimeout >= 0, concurrency.allSatisfy({ $0 > 0 }) else {
            throw ValidationError("counts must be positive")
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        let environment = ProcessInfo.processInfo.environment
        let prefix = self.prefix ?? "sysbench-\(UUID().uuidString.prefix(8).lowercased())"
        let settings = Settings(
            store: store, postgresURL: postgresURL ?? environment["POSTGRES_URL"],
            sqlitePath: sqlitePath ?? "/tmp/system-benchmark-\(prefix).sqlite",
            amqpURL: amqpURL ?? environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F", prefix: prefix,
            events: SagaLifecycleEvent.Selection(rawValue: events) ?? .terminal, prefetch: prefetch, handlers: handlers, local: local,
            localURL: localURL ?? environment[Self.localURLVariable],
            stepTimeout: stepTimeout > 0 ? .milliseconds(Int64(stepTimeout * 1000)) : nil)
        if let role {
            try await ParticipantRole.run(role: role, settings: settings)
        } else {
            try await Starter(options: self, settings: settings, pgData: pgData ?? environment["PG_DATA"]).run()
            if store == "sqlite" && sqlitePath == nil {
                // The default file is this invocation's own: remove it with its WAL files.
                for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: settings.sqlitePath + suffix) }
            }
        }
    }
}

/// The starter: sets up the tables, launches the participants, runs and measures the sagas.
struct Starter: Sendable {
    let options: SystemBenchmark
    let settings: Settings
    let pgData: String?

    func run() async throws {
        let logger = Logger(label: "system-benchmark.starter")
        try await settings.withStore { store in
            let tables: TableAccess =
                if settings.store == "postgres", let url = settings.tablesURL {
                    try TableAccess.postgres(url: url)
                } else {
                    try TableAccess.sqlite(path: settings.sqlitePath)
                }
            try await tables.withRunning {
                try await tables.execute(LocalTables.create)
                let bus = try await RabbitMQBus.connect(url: settings.amqpURL)
                let manager = SagaManager(
                    definitions: BenchSaga.definitions(stepTimeout: settings.stepTimeout), bus: bus, store: store,
                    topology: settings.topology, logger: logger)
                try await manager.declareTopology()
                for (service, commands) in BenchSaga.commands {
                    try await bus.declare(settings.topology.topology(forService: service, commands: commands))
                }
                let children = try Children.launch(
                    roles: ["inventory", "payment", "shipping"], arguments: childArguments(), environment: childEnvironment())
                do {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await manager.run() }
                        while !manager.isListeningForEvents { try await Task.sleep(for: .milliseconds(10)) }
                        try await children.waitUntilReady(timeout: .seconds(120))
                        let progress = Progress()
                        if options.rssEvery > 0 {
                            group.addTask { try await reportRSS(children: children, progress: progress) }
                        }
                        if !options.json {
                            say(
                                "system-benchmark: store \(settings.store), local writes \(settings.local), M=\(options.sagas), "
                                    + "fail \(options.failPct) %, prefetch \(settings.prefetch), handlers \(settings.handlers.map(String.init) ?? "default"), events \(options.events), "
                                    + "load1 \(ProcessProbe.load1())"
                            )
                            say(
                                "      C   sagas/s    p50 ms    p99 ms  verify   CPU µs/step inv/pay/ship   µs/saga starter   peak RSS MB inv/pay/ship/starter"
                            )
                        }
                        for inFlight in options.concurrency {
                            let result = try await measure(
                                inFlight: inFlight, manager: manager, tables: tables, children: children, progress: progress)
                            say(options.json ? result.jsonLine() : result.tableLine())
                        }
                        group.cancelAll()
                    }
                } catch is CancellationError {
                }
                children.close()
                if options.prefix == nil { await removeTopology(bus: bus) }
                await bus.shutdown()
            }
        }
    }

    /// Deletes this invocation's queues and exchanges (their prefix was made for it), once the
    /// participants have exited: a broker that runs benchmarks all day would otherwise keep
    /// thousands of idle durable queues, which cost it CPU in every later run.
    func removeTopology(bus: RabbitMQBus) async {
        var topologies = [settings.topology.shared]
        for (service, commands) in BenchSaga.commands {
            topologies.append(settings.topology.topology(forService: service, commands: commands))
        }
        for topology in topologies {
            for queue in topology.queues { try? await bus.deleteQueue(queue.name) }
            for exchange in topology.exchanges { try? await bus.deleteExchange(exchange.name) }
        }
    }

    /// The arguments a participant process gets (no URL: they may hold passwords, and a
    /// process's arguments are readable by every user of the machine; see ``childEnvironment()``).
    func childArguments() -> [String] {
        var arguments = [
            "--store", settings.store, "--sqlite-path", settings.sqlitePath, "--prefix", settings.prefix,
            "--prefetch", String(settings.prefetch), "--local", settings.local, "--events", options.events,
            "--step-timeout", String(options.stepTimeout),
        ]
        if let handlers = settings.handlers { arguments += ["--handlers", String(handlers)] }
        return arguments
    }

    /// The URLs a participant process gets, in the environment variables it reads them from.
    func childEnvironment() -> [String: String] {
        var environment = ["AMQP_URL": settings.amqpURL]
        if let url = settings.postgresURL { environment["POSTGRES_URL"] = url }
        if let url = settings.localURL { environment[SystemBenchmark.localURLVariable] = url }
        return environment
    }

    /// Prints each process's RSS every `rssEvery` seconds (for a soak): the whole resident set,
    /// and in brackets its anonymous part (`RssAnon`: the heap and stacks, what the process
    /// itself allocated; the rest is the binary's and shared libraries' pages, shared with every
    /// other process that maps them).
    func reportRSS(children: Children, progress: Progress) async throws {
        let clock = ContinuousClock()
        let begin = clock.now
        while true {
            let sagas = progress.value
            let sizes = (children.processes.map { ($0.role, $0.pid) } + [("starter", getpid())]).map { role, pid in
                let rss = ProcessProbe.memoryMB(pid, "VmRSS") ?? 0
                let anonymous = ProcessProbe.memoryMB(pid, "RssAnon") ?? 0
                return "\(role)=\(String(format: "%.1f", rss))(\(String(format: "%.1f", anonymous)))"
            }
            FileHandle.standardError.write(
                Data(
                    "rss t=\(Int((clock.now - begin).seconds))s sagas=\(sagas) MB (anonymous) \(sizes.joined(separator: " "))\n".utf8))
            try await Task.sleep(for: .seconds(options.rssEvery))
        }
    }

    /// Runs the warm-up and the measured sagas at `inFlight`, then verifies the tables.
    func measure(inFlight: Int, manager: SagaManager, tables: TableAccess, children: Children, progress: Progress) async throws
        -> RunResult
    {
        try await tables.execute(LocalTables.reset)
        let total = options.warmup + options.sagas
        var random = SplitMix64(seed: UInt64(12345 + options.run))
        let fails = (0..<total).map { _ in random.next() * 100 < options.failPct }
        let orders = fails.enumerated().map { BenchOrder(index: $0.offset, fail: $0.element) }
        let idPrefix = "\(settings.prefix)-r\(options.run)-c\(inFlight)-\(UUID().uuidString.prefix(4).lowercased())"

        let warm = try await phase(
            range: 0..<options.warmup, inFlight: min(inFlight, 50), orders: orders, idPrefix: idPrefix, manager: manager, progress: progress
        )

        var groups: [String: [pid_t]] = ["driver": [getpid()], "broker": ProcessProbe.pids(named: "beam.smp")]
        for child in children.processes { groups[child.role] = [child.pid] }
        if let pgData { groups["postgres"] = ProcessProbe.postgresPIDs(dataDirectory: pgData) }
        var window = CPUWindow(groups: groups)
        window.start()
        let clock = ContinuousClock()
        let started = clock.now
        let measured = try await phase(
            range: options.warmup..<total, inFlight: inFlight, orders: orders, idPrefix: idPrefix, manager: manager, progress: progress)
        let seconds = (clock.now - started).seconds
        let cores = window.stop()
        let cpuSeconds = window.perPID.mapValues { $0.values.reduce(0, +) }

        let totals = try await tables.totals()
        var result = RunResult(options: options, settings: settings, inFlight: inFlight, seconds: seconds)
        result.latencies = measured.latencies.sorted()
        result.completed = measured.completed.count
        result.compensated = measured.compensated.count
        result.other = options.sagas - result.completed - result.compensated
        result.cores = cores
        // Steps each participant ran in the measured phase: a completed saga is one step at each;
        // a compensated one is reserve + release, charge + refund, and the declined shipment.
        let steps = [
            "inventory": result.completed + 2 * result.compensated, "payment": result.completed + 2 * result.compensated,
            "shipping": result.completed + result.compensated,
        ]
        for (role, count) in steps { result.cpuMicrosecondsPerStep[role] = (cpuSeconds[role] ?? 0) / Double(max(count, 1)) * 1e6 }
        result.starterMicrosecondsPerSaga = (cpuSeconds["driver"] ?? 0) / Double(options.sagas) * 1e6
        for child in children.processes { result.peakRSS[child.role] = ProcessProbe.memoryMB(child.pid, "VmHWM") }
        result.peakRSS["starter"] = ProcessProbe.memoryMB(getpid(), "VmHWM")
        // Conservation over every saga of this configuration, the warm-up included (as the peer).
        result.verify = verify(
            totals: totals, orders: orders, completed: warm.completed.union(measured.completed),
            compensated: warm.compensated.union(measured.compensated))
        result.load1 = ProcessProbe.load1()
        return result
    }

    /// Runs the sagas of `range` with `inFlight` of them open at a time; each is timed from just
    /// before its start to the return of `startAndWait`, which returns the terminal lifecycle
    /// event (the peer's driver waits for the same event; neither reads the database for it).
    func phase(
        range: Range<Int>, inFlight: Int, orders: [BenchOrder], idPrefix: String, manager: SagaManager, progress: Progress
    ) async throws -> PhaseOutcome {
        let shared = PhaseState(first: range.lowerBound)
        let clock = ContinuousClock()
        try await withThrowingTaskGroup(of: Void.self) { workers in
            for _ in 0..<min(inFlight, max(range.count, 1)) {
                workers.addTask {
                    while true {
                        let index = shared.next.withLock { value -> Int in
                            defer { value += 1 }
                            return value
                        }
                        if index >= range.upperBound { return }
                        let id = "\(idPrefix)-\(index)"
                        let begin = clock.now
                        let ending = try await manager.startAndWait(
                            BenchSaga.name, payload: orders[index], id: id, timeout: .seconds(300))
                        let seconds = (clock.now - begin).seconds
                        shared.outcome.withLock { outcome in
                            outcome.latencies.append(seconds)
                            switch ending.status {
                            case .completed: outcome.completed.insert(index)
                            case .compensated: outcome.compensated.insert(index)
                            default: outcome.other.insert(index)
                            }
                        }
                        progress.add()
                    }
                }
            }
            try await workers.waitForAll()
        }
        return shared.outcome.withLock { $0 }
    }

    /// The peer's checks: all terminal, compensations = failures, inventory and money conserved,
    /// shipments = completed sagas.
    func verify(totals: TableTotals, orders: [BenchOrder], completed: Set<Int>, compensated: Set<Int>) -> [String: Bool] {
        let completedOrders = completed.map { orders[$0] }
        let reserved = completedOrders.reduce(Int64(0)) { $0 + Int64($1.qty) }
        let charged = completedOrders.reduce(Int64(0)) { $0 + Int64($1.amount) }
        let expectedFailures = Set(orders.indices.filter { orders[$0].fail })
        var checks: [String: Bool] = [
            "all_terminal": completed.count + compensated.count == orders.count,
            "compensated_as_expected": compensated == expectedFailures,
            "inventory_conserved": totals.available + totals.reserved == LocalTables.initialStock * Int64(LocalTables.skus)
                && totals.reserved == reserved,
            "money_conserved": totals.balance + totals.charged == LocalTables.initialBalance * Int64(LocalTables.accounts)
                && totals.charged == charged,
            "shipped_matches": totals.shipped == Int64(completed.count),
        ]
        if settings.local == "none" {
            // No local writes: only the outcomes can be checked.
            checks = checks.filter { ["all_terminal", "compensated_as_expected"].contains($0.key) }
        }
        checks["ok"] = checks.values.allSatisfy { $0 }
        return checks
    }
}

/// Counts the sagas that ended (for the RSS curve).
final class Progress: Sendable {
    private let count = Mutex(0)
    /// One more saga ended.
    func add() { count.withLock { $0 += 1 } }
    /// Sagas ended so far.
    var value: Int { count.withLock { $0 } }
}

/// Writes a line to standard output at once (no buffering: a pipe reads it immediately).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// What the workers of one phase share: the next saga index and the outcomes so far.
final class PhaseState: Sendable {
    /// The next saga index to start.
    let next: Mutex<Int>
    /// The outcomes so far.
    let outcome = Mutex(PhaseOutcome())

    /// Starts at index `first`.
    init(first: Int) { next = Mutex(first) }
}
