import Synchronization

/// Coalesces concurrent store operations into batches, so that many sagas advancing at the same
/// time share one round trip and one durable commit (group commit, done by the application).
///
/// A caller's request waits in a queue; the coalescer's ``run()`` (a child task of the store's
/// own `run()`, so no unstructured task is involved) takes up to `maxBatch` queued requests, runs
/// them with `execute`, and hands each caller its own result. At most `maxConcurrentBatches`
/// batches run at once. With nothing else queued, a request runs alone at once, so batching adds
/// no latency at low load: batches grow only while earlier ones are in flight. A batch runs in
/// the coalescer's task, never in a caller's, so it carries no caller's task-local values (such
/// as the trace context of the caller that happened to come first).
///
/// Requests carry a key (the saga id). A batch never holds two requests with the same key, and a
/// key is never in two running batches at once: a second change of one saga waits for the batch
/// of the first, so the outcome is the same as running them one after the other, and concurrent
/// batches of one process never lock the same row.
///
/// A request whose data the store refuses (`storeRefused`) fails alone: the requests of a
/// refused batch are run again one at a time.
package final class WriteCoalescer<Request: Sendable, Response: Sendable>: Sendable {
    /// Runs one batch; returns one result per request, in order.
    package typealias Execute = @Sendable ([Request]) async -> [Result<Response, any Error>]

    private struct Pending {
        let key: String
        let request: Request
        let continuation: CheckedContinuation<Response, any Error>
    }

    private struct State {
        var queue: [Pending] = []
        var keysInFlight: Set<String> = []
        /// Workers of ``run()`` waiting for requests.
        var idleWorkers: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWorker = 0
        /// ``finish()`` was called: workers end once the queue is empty.
        var finishing = false
        /// ``run()`` has returned: requests fail at once.
        var closed = false
    }

    private let state = Mutex(State())
    private let maxBatch: Int
    private let maxConcurrentBatches: Int
    private let execute: Execute
    private let closedError: @Sendable () -> any Error
    private let observe: (@Sendable (_ size: Int, _ duration: Duration) -> Void)?
    private let executor: (any TaskExecutor)?

    /// - Parameters:
    ///   - maxBatch: the most requests in one batch.
    ///   - maxConcurrentBatches: the most batches running at once.
    ///   - closedError: the error of a request made after ``run()`` has returned.
    ///   - observe: told each batch's size and how long it ran (for ``StoreBatchMetrics``).
    ///   - executor: where the batches run (the thread of the store's connections, so that a
    ///     batch and its statements do not hand over between threads); `nil` for the global
    ///     executor.
    ///   - execute: runs a batch. It must return exactly one result per request.
    package init(
        maxBatch: Int, maxConcurrentBatches: Int,
        closedError: @escaping @Sendable () -> any Error = { SagaError(.storeUnavailable, "the store is not running") },
        observe: (@Sendable (_ size: Int, _ duration: Duration) -> Void)? = nil,
        executor: (any TaskExecutor)? = nil,
        execute: @escaping Execute
    ) {
        self.maxBatch = max(1, maxBatch)
        self.maxConcurrentBatches = max(1, maxConcurrentBatches)
        self.closedError = closedError
        self.observe = observe
        self.executor = executor
        self.execute = execute
    }

    /// Queues a request and returns its result once its batch has run (requests queue until
    /// ``run()`` runs). Cancelling the caller does not withdraw a request: a store write that may
    /// already be on its way is awaited.
    package func submit(_ request: Request, key: String) async throws -> Response {
        try await withCheckedThrowingContinuation { continuation in
            let (accepted, worker) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
                guard !state.closed else { return (false, nil) }
                state.queue.append(Pending(key: key, request: request, continuation: continuation))
                guard let id = state.idleWorkers.keys.first else { return (true, nil) }
                return (true, state.idleWorkers.removeValue(forKey: id))
            }
            guard accepted else {
                continuation.resume(throwing: closedError())
                return
            }
            worker?.resume()
        }
    }

    /// Runs batches until ``finish()`` was called and the queue is empty, or until cancelled;
    /// then fails whatever is still queued with the closed error, and every later request too.
    package func run() async {
        await withDiscardingTaskGroup { group in
            for _ in 0..<maxConcurrentBatches {
                // High priority: every waiting caller's store round trip goes through a worker,
                // so it must not queue behind the callers' own work.
                group.addTask(executorPreference: executor, priority: .high) { await self.work() }
            }
        }
        let left = state.withLock { state -> [Pending] in
            state.closed = true
            defer { state.queue = [] }
            return state.queue
        }
        for pending in left { pending.continuation.resume(throwing: closedError()) }
    }

    /// Lets ``run()`` return once the requests queued so far have run.
    package func finish() {
        let workers = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finishing = true
            defer { state.idleWorkers = [:] }
            return Array(state.idleWorkers.values)
        }
        for worker in workers { worker.resume() }
    }

    private func work() async {
        var finished: [String] = []
        while !Task.isCancelled {
            let (step, wake) = next(releasing: finished)
            for worker in wake { worker.resume() }
            switch step {
            case .batch(let batch):
                // Closures, not key paths: a key path into this generic type is instantiated at run
                // time on every use (about 0.6 % of a participant's CPU at C = 50).
                let results = await executeIsolatingRefusals(batch.map { $0.request })
                for (index, pending) in batch.enumerated() {
                    if index < results.count {
                        pending.continuation.resume(with: results[index])
                    } else {
                        pending.continuation.resume(throwing: SagaError(.invalidState, "a store batch returned too few results"))
                    }
                }
                finished = batch.map { $0.key }
            case .wait(let id):
                finished = []
                await waitForWork(id)
            case .end:
                return
            }
        }
    }

    /// Runs a batch; when the store refused some of its requests (`storeRefused`: a
    /// constraint, a trigger, a value it cannot hold), runs each of those again alone. A refused
    /// statement rolls back its whole batch, so the others failed only for being in it: alone,
    /// they succeed, and the request whose data is refused fails by itself.
    private func executeIsolatingRefusals(_ requests: [Request]) async -> [Result<Response, any Error>] {
        var results = await executeObserved(requests)
        guard requests.count > 1, results.count == requests.count else { return results }
        for index in results.indices where Self.isRefusal(results[index]) {
            results[index] = await executeObserved([requests[index]]).first ?? results[index]
        }
        return results
    }

    private func executeObserved(_ requests: [Request]) async -> [Result<Response, any Error>] {
        let started = ContinuousClock.now
        let results = await execute(requests)
        observe?(requests.count, ContinuousClock.now - started)
        return results
    }

    private static func isRefusal(_ result: Result<Response, any Error>) -> Bool {
        guard case .failure(let error) = result else { return false }
        return (error as? SagaError)?.code == .storeRefused
    }

    private enum Next {
        case batch([Pending])
        case wait(Int)
        case end
    }

    /// Releases the keys of the batch that just ran and takes the next batch. A request left
    /// behind has its key in another running batch, whose worker takes it after releasing the
    /// key.
    /// Also returns the idle workers to wake when the queue ran empty after ``finish()``.
    private func next(releasing finished: [String]) -> (Next, [CheckedContinuation<Void, Never>]) {
        state.withLock { state -> (Next, [CheckedContinuation<Void, Never>]) in
            for key in finished { state.keysInFlight.remove(key) }
            var batch: [Pending] = []
            var remaining: [Pending] = []
            var batchKeys: Set<String> = []
            for pending in state.queue {
                if batch.count < maxBatch, !state.keysInFlight.contains(pending.key), batchKeys.insert(pending.key).inserted {
                    batch.append(pending)
                } else {
                    remaining.append(pending)
                }
            }
            guard !batch.isEmpty else {
                if state.finishing && state.queue.isEmpty {
                    defer { state.idleWorkers = [:] }
                    return (.end, Array(state.idleWorkers.values))
                }
                state.nextWorker += 1
                return (.wait(state.nextWorker), [])
            }
            state.queue = remaining
            state.keysInFlight.formUnion(batchKeys)
            return (.batch(batch), [])
        }
    }

    /// Sleeps until a request arrives, ``finish()`` is called, or the task is cancelled.
    private func waitForWork(_ id: Int) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    let takeable = state.queue.contains { !state.keysInFlight.contains($0.key) }
                    if Task.isCancelled || (state.finishing && state.queue.isEmpty) || takeable {
                        return true
                    }
                    state.idleWorkers[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let worker = state.withLock { $0.idleWorkers.removeValue(forKey: id) }
            worker?.resume()
        }
    }
}

/// A saga to write (a creation or a transition) with its outbox messages, already turned into a
/// store's column values by the caller, before it joins a batch: encoding then runs in the
/// callers' tasks in parallel, not one after the other inside the batch.
package struct EncodedWrite<Row: Sendable, Message: Sendable>: Sendable {
    /// The state as it is stored (with its new version).
    package let state: SagaState
    /// The version the write expects to replace (0 for a creation).
    package let expected: Int64
    package let row: Row
    package let outbox: [Message]

    package init(
        _ state: SagaState, expected: Int64, outbox: [OutboxMessage], row: (SagaState) throws -> Row,
        message: (OutboxMessage) throws -> Message
    ) throws {
        self.state = state
        self.expected = expected
        self.row = try row(state)
        self.outbox = try outbox.map(message)
    }
}
