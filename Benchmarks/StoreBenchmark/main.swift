// Measures the saga stores: create, the transition round trip (load + commit with one outbox
// message) sequentially and from concurrent tasks, and claiming stalled sagas.
//
//   swift run -c release StoreBenchmark [--iterations 2000] [--concurrency 16] [--stores memory,sqlite,postgres]
//
// PostgreSQL: POSTGRES_URL, or the server of scripts/postgres.sh (started when needed).
import Foundation
import SagaCore
import SagaPostgres
import SagaSQLite
import SagaTestSupport

/// Latencies of one measured operation.
struct Measurement {
    var name: String
    var operations: Int
    var elapsed: Duration
    var latencies: [Duration]

    var perSecond: Double { Double(operations) / seconds(elapsed) }

    func percentile(_ p: Double) -> Duration {
        let sorted = latencies.sorted()
        guard !sorted.isEmpty else { return .zero }
        return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.down)))]
    }

    var line: String {
        let ops = String(format: "%10.0f ops/s", perSecond)
        let p50 = String(format: "p50 %8.3f ms", seconds(percentile(0.50)) * 1000)
        let p99 = String(format: "p99 %8.3f ms", seconds(percentile(0.99)) * 1000)
        return "  \(name.padding(toLength: 34, withPad: " ", startingAt: 0)) \(ops)   \(p50)   \(p99)"
    }
}

func seconds(_ duration: Duration) -> Double {
    let (whole, attoseconds) = duration.components
    return Double(whole) + Double(attoseconds) / 1e18
}

struct Options {
    var iterations = 2000
    var concurrency = 16
    var stores = ["memory", "sqlite", "postgres"]

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--iterations": iterations = iterator.next().flatMap { Int($0) } ?? iterations
            case "--concurrency": concurrency = iterator.next().flatMap { Int($0) } ?? concurrency
            case "--stores": stores = iterator.next()?.split(separator: ",").map(String.init) ?? stores
            default:
                print("usage: StoreBenchmark [--iterations N] [--concurrency N] [--stores memory,sqlite,postgres]")
                exit(2)
            }
        }
    }
}

enum StoreBenchmark {
    static let now = Date()

    static func state(_ id: String, updatedAt: Date = now) -> SagaState {
        SagaState(
            id: id, name: "benchmark", status: .running, currentStep: 0, attempt: 1,
            payload: ["orderId": .string(id), "amount": 42.5, "items": ["sku-1", "sku-2"]],
            context: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], history: [],
            createdAt: updatedAt, updatedAt: updatedAt, version: 0
        )
    }

    static func message(_ sagaID: String, _ index: Int) -> OutboxMessage {
        OutboxMessage(
            id: "\(sagaID)-m\(index)", sagaID: sagaID, exchange: "sagas", routingKey: "order.step",
            body: Array(#"{"command":"reserve","orderId":"42"}"#.utf8), headers: ["content-type": "application/json"],
            createdAt: Date()
        )
    }

    /// Load, append a history record, commit with one outbox message.
    static func transition(_ store: any SagaStore, _ id: String, _ index: Int) async throws {
        var state = try await store.load(id)
        let version = state.version
        state.currentStep += 1
        state.payload["step\(index % 4)"] = .number(Double(index))
        state.history.append(
            StepRecord(
                step: state.currentStep, stepName: "step", phase: .action, attempt: 1, startedAt: Date(),
                finishedAt: Date(), outcome: .completed
            )
        )
        if state.history.count > 8 { state.history.removeFirst() }
        state.updatedAt = Date()
        try await store.commit(SagaTransition(state: state, expectedVersion: version, outbox: [message(id, index)]))
    }

    static func measure(
        _ name: String, operations: Int, tasks: Int = 1, _ body: @escaping @Sendable (Int) async throws -> Void
    ) async throws -> Measurement {
        let clock = ContinuousClock()
        let start = clock.now
        let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var mine: [Duration] = []
                    var index = task
                    while index < operations {
                        let began = clock.now
                        try await body(index)
                        mine.append(clock.now - began)
                        index += tasks
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        return Measurement(name: name, operations: operations, elapsed: clock.now - start, latencies: latencies)
    }

    static func run(_ label: String, _ store: any SagaStore, _ options: Options) async throws {
        print("\(label):")
        let n = options.iterations
        let run = UUID().uuidString.prefix(8)
        let ids = (0..<n).map { "bench-\(run)-\($0)" }
        print(
            try await measure("create", operations: n) { index in
                _ = try await store.create(state(ids[index]), outbox: [message(ids[index], 0)])
            }.line)
        print(
            try await measure("transition (sequential)", operations: n) { index in
                try await transition(store, ids[index], index)
            }.line)
        let c = options.concurrency
        print(
            try await measure("transition (\(c) tasks)", operations: n, tasks: c) { index in
                try await transition(store, ids[index], index + n)
            }.line)
        // Stalled sagas: updated long ago; each claim takes a batch of 10.
        let stalled = (0..<n).map { "stalled-\(run)-\($0)" }
        for id in stalled {
            _ = try await store.create(state(id, updatedAt: now.addingTimeInterval(-3600)), outbox: [])
        }
        let batches = n / 10
        let claim = try await measure("claimStalled (batch of 10)", operations: batches, tasks: 4) { index in
            let claimed = try await store.claimStalled(
                updatedBefore: now.addingTimeInterval(-60), now: Date(), owner: "reaper-\(index % 4)",
                lease: .seconds(600), limit: 10
            )
            if claimed.count != 10 { print("    (claim \(index) got \(claimed.count))") }
        }
        print(claim.line)
        print(
            try await measure("pendingOutbox(100) + markSent", operations: 20) { _ in
                let pending = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
                try await store.markSent(pending.map(\.id))
            }.line)
    }

    static func main() async {
        let options = Options(CommandLine.arguments)
        print("store benchmark: \(options.iterations) operations, \(options.concurrency) concurrent tasks")
        do {
            for name in options.stores {
                switch name {
                case "memory":
                    try await run("in-memory", InMemorySagaStore(), options)
                case "sqlite":
                    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
                        "sagakit-bench-\(UUID())")
                    defer { try? FileManager.default.removeItem(at: directory) }
                    let path = directory.appendingPathComponent("sagas.db").path
                    try await SQLiteSagaStore(path: path).withRunning { store in
                        try await run("SQLite (WAL, synchronous=FULL, \(path))", store, options)
                    }
                    let normal = SQLiteSagaStore(
                        configuration: .init(path: directory.appendingPathComponent("normal.db").path, synchronous: .normal)
                    )
                    try await normal.withRunning { normal in
                        try await run("SQLite (WAL, synchronous=NORMAL)", normal, options)
                    }
                case "postgres":
                    guard let url = try await TestPostgres.url() else {
                        print("PostgreSQL: skipped (no server)")
                        continue
                    }
                    var configuration = try PostgresSagaStore.Configuration(url: url)
                    configuration.schema = "sagakit_bench"
                    try await PostgresSagaStore(configuration: configuration).withRunning { store in
                        try await run(
                            "PostgreSQL (\(configuration.location), schema \(configuration.schema))", store, options)
                    }
                default:
                    print("unknown store \(name)")
                }
            }
        } catch {
            print("benchmark failed: \(error)")
            exit(1)
        }
    }
}

await StoreBenchmark.main()
