import Foundation
import Participant
import SagaTestSupport
import Synchronization

/// `saga-benchmark --starts M`: how fast sagas can be started (stored with their first command,
/// the command confirmed by the broker), one call per saga with C calls in flight versus one
/// `SagaManager.start(_:payloads:)` call for all M. No participant runs: the commands wait in the
/// first step's queue, which is deleted afterwards. Repetitions interleave the two ways; the
/// table shows medians and their ratio.
extension SagaBenchmark {
    func runStarts(count: Int, amqp: String) async throws {
        print("saga-benchmark --starts: \(count) sagas per run, store \(store), \(repetitions) repetition(s), interleaved; medians")
        var single: [String: [Double]] = [:]
        var batch: [Double] = []
        for repetition in 1...repetitions {
            for inFlight in concurrency {
                single[String(inFlight), default: []].append(try await startRun(count: count, amqp: amqp, inFlight: inFlight))
            }
            batch.append(try await startRun(count: count, amqp: amqp, inFlight: nil))
            FileHandle.standardError.write(Data("  … repetition \(repetition)/\(repetitions) done\n".utf8))
        }
        let batchMedian = median(batch)
        print("  way                                 starts/s   batch ÷ this")
        for inFlight in concurrency {
            let rate = median(single[String(inFlight)] ?? [])
            print(String(format: "  start(_:payload:), %4d in flight %11.0f %11.2f×", inFlight, rate, batchMedian / rate))
        }
        print(String(format: "  start(_:payloads:), one call      %11.0f", batchMedian))
    }

    /// One run: `count` starts, one per call with `inFlight` in flight, or one batch (`nil`);
    /// returns starts per second.
    private func startRun(count: Int, amqp: String, inFlight: Int?) async throws -> Double {
        let (store, close) = try await openStore()
        let topology = SagaTopology(prefix: "starts-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let bus = try await RabbitMQBus.connect(url: amqp)
        let manager = SagaManager(
            definitions: TestSagas.registry, bus: bus, store: store, topology: topology, logger: Logger(label: "starts"))
        try await manager.declareTopology()
        try await bus.declare(topology.topology(forService: "inventory", commands: ["inventory.reserve", "inventory.release"]))
        // One saga first, so that both ways start with the definitions registered.
        try await manager.start("order", payload: ["orderId": "warm-up"])
        let payloads: [JSONObject] = (0..<count).map { ["orderId": .string("s-\($0)"), "amount": 1] }
        let clock = ContinuousClock()
        let began = clock.now
        if let inFlight {
            let next = Counter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<inFlight {
                    group.addTask {
                        while true {
                            let index = next.take()
                            if index >= count { return }
                            try await manager.start("order", payload: payloads[index])
                        }
                    }
                }
                try await group.waitForAll()
            }
        } else {
            let starts = try await manager.start("order", payloads: payloads)
            let failed = starts.filter { !$0.isStored }.count
            if failed > 0 { print("  \(failed) saga(s) of the batch were not stored") }
        }
        let seconds = (clock.now - began).seconds
        try? await bus.deleteQueue(topology.queue(forService: "inventory"))
        await bus.shutdown()
        await close()
        return Double(count) / seconds
    }
}

/// Hands out 0, 1, 2, … to the workers of a run.
private final class Counter: Sendable {
    private let value = Mutex(0)
    func take() -> Int {
        value.withLock { value in
            defer { value += 1 }
            return value
        }
    }
}

private func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}
