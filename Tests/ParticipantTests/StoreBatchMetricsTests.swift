import Foundation
import MetricsTestKit
import SagaCore
import SagaSQLite
import SagaTesting
import Testing

/// The stores report their batches (group commit): how many sagas each held and how long it
/// ran, by store and operation, to the process's metrics backend.
@Suite("Store batch metrics")
struct StoreBatchMetricsTests {
    @Test func anObserverRecordsTheBatchsSizeAndDuration() throws {
        let metrics = TestMetricsBackend.shared
        let store = "test-\(UUID().uuidString.prefix(8))"
        let observe = StoreBatchMetrics.observer(store: store, operation: "commit")
        observe(5, .milliseconds(3))
        observe(1, .microseconds(250))
        let dimensions = [("store", store), ("operation", "commit")]
        #expect(try metrics.expectRecorder(StoreBatchMetrics.sizeLabel, dimensions).values == [5, 1])
        #expect(try metrics.expectTimer(StoreBatchMetrics.durationLabel, dimensions).values == [3_000_000, 250_000])
    }

    /// A SQLite store's creations and commits under concurrency come out as batches of 1 to 64
    /// sagas that add up to at least the sagas written (other tests' stores add theirs).
    @Test func aStoreReportsItsBatches() async throws {
        let metrics = TestMetricsBackend.shared
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("batch-metrics-\(UUID().uuidString).sqlite").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<40 {
                    group.addTask {
                        let created = try await store.create(SagaStoreConformance.makeState(), outbox: []).state
                        var next = created
                        next.currentStep = 1
                        next.version += 1
                        _ = try await store.commit(SagaTransition(state: next, expectedVersion: created.version, outbox: []))
                    }
                }
                try await group.waitForAll()
            }
        }
        for operation in ["create", "commit"] {
            let dimensions = [("store", "sqlite"), ("operation", operation)]
            let sizes = try metrics.expectRecorder(StoreBatchMetrics.sizeLabel, dimensions).values
            #expect(sizes.reduce(0, +) >= 40, "\(operation): \(sizes)")
            #expect(sizes.allSatisfy { (1...64).contains($0) }, "\(operation): \(sizes)")
            #expect(try !metrics.expectTimer(StoreBatchMetrics.durationLabel, dimensions).values.isEmpty)
        }
    }
}
