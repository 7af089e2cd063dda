// Measures whole sagas through the real stack: RabbitMQ (persistent messages, publisher
// confirms), a store (SQLite or PostgreSQL), and three participants with one connection each,
// all in this process. Not a test: it prints figures.
//
//   swift run -c release saga-benchmark --store postgres --sagas 2000 --concurrency 50
import ArgumentParser
import Foundation
import Participant
import SagaPostgres
import SagaSQLite
import SagaTestSupport
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

@main
struct SagaBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saga-benchmark",
        abstract: "Runs M three-step sagas with C in flight and prints sagas/s, latency and CPU per step."
    )

    @Option(help: "Number of sagas per run.") var sagas = 2000
    @Option(parsing: .upToNextOption, help: "Sagas in flight (one run per value).") var concurrency: [Int] = [1, 50, 200]
    @Option(help: "sqlite or postgres.") var store = "sqlite"
    @Option(help: "Fraction of sagas whose payment is declined (they compensate).") var failureRate = 0.0
    @Option(help: "AMQP URL (default: AMQP_URL or the local broker).") var amqpURL: String?
    @Option(help: "PostgreSQL URL (default: POSTGRES_URL).") var postgresURL: String?
    @Option(help: "Prefetch of each participant.") var prefetch = 256
    @Option(
        help: """
            How the starter learns a saga ended: events (SagaManager.outcome woken by lifecycle events, the manager run as \
            a service), poll (SagaManager.outcome reading the store every 50 ms, the manager not run), board (the last \
            handler tells the starter in-process: no broker or store hop, an upper bound).
            """)
    var wait = "events"
    @Option(
        help: """
            Lifecycle events published: terminal, outcomes, all or none. The default, terminal, is what SystemBenchmark \
            and the yardstick's peer publish (one event per saga, the one the starter waits for).
            """)
    var events = "terminal"
    @Option(
        help: """
            Measure starts only: M sagas started one call each (with each --concurrency in flight) versus one batch call \
            (SagaManager.start(_:payloads:)); no participant runs.
            """)
    var starts: Int?
    @Option(help: "Repetitions of --starts runs (interleaved; medians are printed).") var repetitions = 3

    func validate() throws {
        guard ["events", "poll", "board"].contains(wait) else { throw ValidationError("--wait must be events, poll or board") }
        guard SagaLifecycleEvent.Selection(rawValue: events) != nil else {
            throw ValidationError("--events must be terminal, outcomes, all or none")
        }
        if wait == "events" && events == "none" { throw ValidationError("--wait events needs --events terminal, outcomes or all") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        let amqp = amqpURL ?? ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        if let starts {
            try await runStarts(count: starts, amqp: amqp)
            return
        }
        print(
            "saga-benchmark: \(sagas) sagas per run, store \(store), failure rate \(failureRate), prefetch \(prefetch), wait \(wait), events \(events)"
        )
        print("  concurrency   sagas/s    p50 ms    p99 ms   CPU µs/step   completed/compensated/other")
        for inFlight in concurrency {
            let result = try await runOnce(inFlight: inFlight, amqp: amqp)
            print(
                String(
                    format: "  %11d %9.0f %9.1f %9.1f %13.0f   %d/%d/%d", inFlight, result.rate, result.p50 * 1000, result.p99 * 1000,
                    result.cpuPerStep * 1e6, result.completed, result.compensated, result.other
                )
            )
        }
    }

    struct Result {
        var rate: Double
        var p50: Double
        var p99: Double
        var cpuPerStep: Double
        var completed: Int
        var compensated: Int
        var other: Int
    }

    /// Runs a store service until the returned closure shuts it down. (A benchmark's own task:
    /// its run spans the whole measurement, which is not one scope here.)
    private func running<Store: SagaStore & Service>(
        _ store: Store, shutdown: @escaping @Sendable (Store) async -> Void
    ) -> (any SagaStore, () async -> Void) {
        let runner = Task { try await store.run() }
        return (
            store,
            {
                await shutdown(store)
                if case .failure(let error) = await runner.result { print("store failed: \(error)") }
            }
        )
    }

    func openStore() async throws -> (any SagaStore, () async -> Void) {
        switch store {
        case "postgres":
            guard let url = postgresURL ?? ProcessInfo.processInfo.environment["POSTGRES_URL"] else {
                throw ValidationError(
                    "--store postgres needs --postgres-url or POSTGRES_URL (scripts/postgres.sh start; scripts/postgres.sh url)")
            }
            return running(try PostgresSagaStore(url: url), shutdown: { await $0.shutdown() })
        case "sqlite":
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("saga-benchmark-\(UUID().uuidString).db").path
            return running(SQLiteSagaStore(path: path), shutdown: { await $0.shutdown() })
        default:
            throw ValidationError("--store must be sqlite or postgres")
        }
    }

    func runOnce(inFlight: Int, amqp: String) async throws -> Result {
        let (store, close) = try await openStore()
        let topology = SagaTopology(
            prefix: "bench-\(UUID().uuidString.prefix(6))", delayLevels: [1], events: SagaLifecycleEvent.Selection(rawValue: events) ?? .all
        )
        let logger = Logger(label: "saga-benchmark")
        // The last handler of each saga reports its end here once the terminal state is stored
        // (completeStep/completeCompensation return after the commit), so the benchmark does not
        // have to poll the store.
        let board = CompletionBoard()
        var handlers: [String: SagaHandlerRegistry] = [:]
        var inventory = SagaHandlerRegistry()
        inventory.register("inventory.reserve") { try await $0.completeStep(merging: ["reserved": true]) }
        inventory.register("inventory.release") { context in
            try await context.completeCompensation()
            board.finish(context.sagaID, .compensated)
        }
        handlers["inventory"] = inventory
        var payment = SagaHandlerRegistry()
        payment.register("payment.charge") { context in
            if context.payload["decline"] == .bool(true) {
                try await context.failAndCompensate(reason: "declined")
            } else {
                try await context.completeStep(merging: ["charged": true])
            }
        }
        payment.register("payment.refund") { try await $0.completeCompensation() }
        handlers["payment"] = payment
        var shipping = SagaHandlerRegistry()
        shipping.register("shipping.ship") { context in
            try await context.completeStep(merging: ["shipped": true])
            board.finish(context.sagaID, .completed)
        }
        handlers["shipping"] = shipping

        let starterBus = try await RabbitMQBus.connect(url: amqp)
        let manager = SagaManager(definitions: TestSagas.registry, bus: starterBus, store: store, topology: topology, logger: logger)
        try await manager.declareTopology()
        for (service, registry) in handlers {
            try await starterBus.declare(topology.topology(forService: service, commands: registry.commands))
        }
        var participantBuses: [RabbitMQBus] = []
        for _ in handlers { participantBuses.append(try await RabbitMQBus.connect(url: amqp)) }

        let sagas = self.sagas
        let failureRate = self.failureRate
        let prefetch = self.prefetch
        let wait = self.wait
        let result = try await withThrowingTaskGroup(of: Void.self) { group in
            if wait == "events" {
                group.addTask { try await manager.run() }
                while !manager.isListeningForEvents { try await Task.sleep(for: .milliseconds(10)) }
            }
            for (index, (service, registry)) in handlers.sorted(by: { $0.key < $1.key }).enumerated() {
                let participant = SagaParticipant(
                    configuration: ParticipantConfiguration(service: service, topology: topology, prefetch: prefetch, reaper: nil),
                    definitions: TestSagas.registry, handlers: registry, bus: participantBuses[index], store: store, logger: logger
                )
                group.addTask { try await participant.run() }
            }
            let cpuBefore = processCPUSeconds()
            let clock = ContinuousClock()
            let started = clock.now
            let tally = Tally()
            try await withThrowingTaskGroup(of: Void.self) { workers in
                for _ in 0..<inFlight {
                    workers.addTask {
                        while true {
                            let index = tally.next.withLock { value -> Int in
                                defer { value += 1 }
                                return value
                            }
                            if index >= sagas { return }
                            let decline = Double(index % 1000) / 1000 < failureRate
                            let begin = clock.now
                            let id = "b-\(index)-\(UUID().uuidString.prefix(8))"
                            let finalStatus: SagaStatus
                            if wait == "board" {
                                async let status = board.wait(for: id)
                                do {
                                    try await manager.start("order", payload: ["orderId": .string(id), "decline": .bool(decline)], id: id)
                                } catch {
                                    board.finish(id, .needsAttention)  // releases the waiter
                                    throw error
                                }
                                finalStatus = await status
                            } else {
                                finalStatus = try await manager.startAndWait(
                                    "order", payload: ["orderId": .string(id), "decline": .bool(decline)], id: id, timeout: .seconds(120)
                                ).status
                            }
                            let seconds = (clock.now - begin).seconds
                            tally.latencies.withLock { $0.append(seconds) }
                            tally.statuses.withLock { $0[finalStatus, default: 0] += 1 }
                            let done = tally.progress.withLock { value -> Int in
                                value += 1
                                return value
                            }
                            if done % 500 == 0 {
                                FileHandle.standardError.write(Data("  … \(done)/\(sagas) sagas done at C=\(inFlight)\n".utf8))
                            }
                        }
                    }
                }
                try await workers.waitForAll()
            }
            let elapsed = (clock.now - started).seconds
            let cpu = processCPUSeconds() - cpuBefore
            group.cancelAll()
            let sorted = tally.latencies.withLock { $0.sorted() }
            let counts = tally.statuses.withLock { $0 }
            let completed = counts[.completed] ?? 0
            let compensated = counts[.compensated] ?? 0
            // Steps run: 3 per completed saga; 2 per compensated one (reserve, release) plus the
            // declined charge.
            let steps = completed * 3 + compensated * 3
            return Result(
                rate: Double(sagas) / elapsed,
                p50: percentile(sorted, 0.50),
                p99: percentile(sorted, 0.99),
                cpuPerStep: cpu / Double(max(steps, 1)),
                completed: completed,
                compensated: compensated,
                other: sagas - completed - compensated
            )
        }
        for bus in participantBuses { await bus.shutdown() }
        await starterBus.shutdown()
        await close()
        return result
    }
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

/// User + system CPU time of this process, in seconds.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Lets a worker wait for the end of a saga that a handler in this process reports.
final class CompletionBoard: Sendable {
    private struct State {
        var waiting: [SagaID: CheckedContinuation<SagaStatus, Never>] = [:]
        var finished: [SagaID: SagaStatus] = [:]
    }
    private let state = Mutex(State())

    func finish(_ id: SagaID, _ status: SagaStatus) {
        let waiter = state.withLock { state -> CheckedContinuation<SagaStatus, Never>? in
            if let waiter = state.waiting.removeValue(forKey: id) { return waiter }
            state.finished[id] = status
            return nil
        }
        waiter?.resume(returning: status)
    }

    func wait(for id: SagaID) async -> SagaStatus {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> SagaStatus? in
                if let status = state.finished.removeValue(forKey: id) { return status }
                state.waiting[id] = continuation
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }
}

/// Counters shared by the benchmark's workers.
final class Tally: Sendable {
    let next = Mutex(0)
    let latencies = Mutex<[Double]>([])
    let statuses = Mutex<[SagaStatus: Int]>([:])
    let progress = Mutex(0)
}
