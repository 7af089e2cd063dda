import Synchronization
import Testing

@testable import SagaCore

/// Records what each batch held and lets a test hold batches until it releases them.
private final class BatchLog: Sendable {
    let batches = Mutex<[[String]]>([])
    let running = Mutex(0)
    let maxRunning = Mutex(0)

    func record(_ batch: [String]) {
        batches.withLock { $0.append(batch) }
        let now = running.withLock { value -> Int in
            value += 1
            return value
        }
        maxRunning.withLock { $0 = max($0, now) }
    }

    func finished() { running.withLock { $0 -= 1 } }
}

/// Runs the coalescer's batches while `body` runs.
private func whileRunning<Request, Response, Result>(
    _ coalescer: WriteCoalescer<Request, Response>, _ body: () async throws -> Result
) async throws -> Result {
    try await withThrowingDiscardingTaskGroup { group in
        group.addTask { await coalescer.run() }
        defer { coalescer.finish() }
        return try await body()
    }
}

/// A task executor that runs each job on the global executor and counts them.
private final class CountingExecutor: TaskExecutor {
    let jobs = Mutex(0)

    func enqueue(_ job: consuming ExecutorJob) {
        jobs.withLock { $0 += 1 }
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        Task.detached { job.runSynchronously(on: executor) }
    }
}

/// A task-local value a caller sets, to see whether a batch runs with it.
private enum CallerTag {
    @TaskLocal static var value: String?
}

@Suite("WriteCoalescer")
struct WriteCoalescerTests {
    @Test("batches run on the executor they were given")
    func batchesRunOnTheirExecutor() async throws {
        let executor = CountingExecutor()
        let seen = Mutex<[UnownedTaskExecutor?]>([])
        let coalescer = WriteCoalescer<String, String>(maxBatch: 8, maxConcurrentBatches: 1, executor: executor) { batch in
            seen.withLock { $0.append(withUnsafeCurrentTask { $0?.unownedTaskExecutor }) }
            return batch.map { .success($0.uppercased()) }
        }
        try await whileRunning(coalescer) { () async throws in
            #expect(try await coalescer.submit("a", key: "a") == "A")
            #expect(try await coalescer.submit("b", key: "b") == "B")
        }
        #expect(seen.withLock { $0 } == [executor.asUnownedTaskExecutor(), executor.asUnownedTaskExecutor()])
        #expect(executor.jobs.withLock { $0 } >= 2)
    }

    @Test("a lone request runs at once, alone")
    func loneRequest() async throws {
        let log = BatchLog()
        let coalescer = WriteCoalescer<String, String>(maxBatch: 8, maxConcurrentBatches: 1) { batch in
            log.record(batch)
            log.finished()
            return batch.map { .success($0.uppercased()) }
        }
        try await whileRunning(coalescer) { () async throws in
            #expect(try await coalescer.submit("a", key: "a") == "A")
        }
        #expect(log.batches.withLock { $0 } == [["a"]])
    }

    @Test("concurrent requests share batches, each caller gets its own result")
    func concurrentRequestsShareBatches() async throws {
        let log = BatchLog()
        let coalescer = WriteCoalescer<Int, Int>(maxBatch: 16, maxConcurrentBatches: 2) { batch in
            log.record(batch.map(String.init))
            try? await Task.sleep(for: .milliseconds(5))
            log.finished()
            return batch.map { $0 % 7 == 0 ? .failure(SagaError(.versionConflict, "\($0)")) : .success($0 * 10) }
        }
        let results = try await whileRunning(coalescer) {
            await withTaskGroup(of: (Int, Int?).self) { group in
                for value in 0..<200 {
                    group.addTask { (value, try? await coalescer.submit(value, key: "k\(value)")) }
                }
                var results: [Int: Int?] = [:]
                for await (value, result) in group { results[value] = result }
                return results
            }
        }
        for value in 0..<200 {
            #expect(results[value] == (value % 7 == 0 ? nil : value * 10))
        }
        let batches = log.batches.withLock { $0 }
        #expect(batches.flatMap { $0 }.count == 200)
        #expect(batches.count < 100, "200 concurrent requests should share batches, got \(batches.count) batches")
        #expect(batches.allSatisfy { $0.count <= 16 })
        #expect(log.maxRunning.withLock { $0 } <= 2)
    }

    /// A store that refuses one request's data rolls its whole batch back: the coalescer runs
    /// each refused request again alone, so that only the request the store refuses fails.
    @Test("a refused request fails alone; the others of its batch run again and succeed")
    func aRefusedRequestFailsAlone() async throws {
        let log = BatchLog()
        let coalescer = WriteCoalescer<Int, Int>(maxBatch: 16, maxConcurrentBatches: 1) { batch in
            log.record(batch.map(String.init))
            try? await Task.sleep(for: .milliseconds(5))
            log.finished()
            // Like a transaction: one refused value fails every request of the batch.
            guard !batch.contains(13) else {
                return batch.map { _ in .failure(SagaError(.storeRefused, "value 13 violates a check constraint")) }
            }
            return batch.map { .success($0 * 10) }
        }
        let results = try await whileRunning(coalescer) {
            await withTaskGroup(of: (Int, Result<Int, SagaError>).self) { group in
                for value in 0..<40 {
                    group.addTask {
                        do {
                            return (value, .success(try await coalescer.submit(value, key: "k\(value)")))
                        } catch {
                            return (value, .failure(error as? SagaError ?? SagaError(.invalidState, "\(error)")))
                        }
                    }
                }
                var results: [Int: Result<Int, SagaError>] = [:]
                for await (value, result) in group { results[value] = result }
                return results
            }
        }
        for value in 0..<40 where value != 13 {
            #expect((try? results[value]?.get()) == value * 10, "request \(value)")
        }
        guard case .failure(let refused) = results[13] else {
            Issue.record("the refused request succeeded")
            return
        }
        #expect(refused.code == .storeRefused)
        let batches = log.batches.withLock { $0 }
        // Request 13 shared a batch first (or the test proves nothing), then ran alone.
        #expect(batches.contains { $0.contains("13") && $0.count > 1 })
        #expect(batches.last { $0.contains("13") } == ["13"])
    }

    @Test("one key is never twice in a batch nor in two running batches")
    func keysAreSerialised() async throws {
        let log = BatchLog()
        let inFlight = Mutex<Set<String>>([])
        let overlaps = Mutex(0)
        let coalescer = WriteCoalescer<String, String>(maxBatch: 32, maxConcurrentBatches: 4) { batch in
            log.record(batch)
            let keys = Set(batch)
            inFlight.withLock { running in
                if !running.isDisjoint(with: keys) || keys.count != batch.count { overlaps.withLock { $0 += 1 } }
                running.formUnion(keys)
            }
            try? await Task.sleep(for: .milliseconds(2))
            inFlight.withLock { $0.subtract(keys) }
            log.finished()
            return batch.map { .success($0) }
        }
        try await whileRunning(coalescer) {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<300 {
                    // 10 keys, each submitted 30 times concurrently.
                    group.addTask { _ = try? await coalescer.submit("saga-\(index % 10)", key: "saga-\(index % 10)") }
                }
            }
        }
        #expect(overlaps.withLock { $0 } == 0)
        #expect(log.batches.withLock { $0 }.flatMap { $0 }.count == 300)
    }

    @Test("a batch does not run with the task-local values of the caller that started it")
    func batchesDoNotInheritACallersTaskLocals() async throws {
        let coalescer = WriteCoalescer<Int, String>(maxBatch: 4, maxConcurrentBatches: 1) { batch in
            batch.map { _ in .success(CallerTag.value ?? "none") }
        }
        let seen = try await whileRunning(coalescer) {
            try await CallerTag.$value.withValue("caller-1") { try await coalescer.submit(1, key: "1") }
        }
        #expect(seen == "none")
    }

    @Test("a batch that fails as a whole fails every request in it")
    func wholeBatchFailure() async throws {
        let coalescer = WriteCoalescer<Int, Int>(maxBatch: 4, maxConcurrentBatches: 1) { batch in
            batch.map { _ in .failure(SagaError(.storeUnavailable, "down")) }
        }
        try await whileRunning(coalescer) {
            await withTaskGroup(of: Void.self) { group in
                for value in 0..<10 {
                    group.addTask {
                        await #expect(throws: SagaError.self) { try await coalescer.submit(value, key: "\(value)") }
                    }
                }
            }
        }
    }

    @Test("requests queued before run() wait for it; finish() lets them run; later requests fail")
    func lifecycle() async throws {
        let coalescer = WriteCoalescer<Int, Int>(
            maxBatch: 4, maxConcurrentBatches: 1, closedError: { SagaError(.storeUnavailable, "closed") }
        ) { batch in
            batch.map { .success($0 + 1) }
        }
        try await withThrowingTaskGroup(of: Int.self) { group in
            for value in 0..<10 { group.addTask { try await coalescer.submit(value, key: "\(value)") } }
            try await Task.sleep(for: .milliseconds(50))
            coalescer.finish()
            await coalescer.run()  // runs what was queued, then returns
            let results = try await group.reduce(into: []) { $0.append($1) }
            #expect(results.sorted() == Array(1...10))
        }
        await #expect(throws: SagaError.self) { try await coalescer.submit(1, key: "1") }
    }
}
