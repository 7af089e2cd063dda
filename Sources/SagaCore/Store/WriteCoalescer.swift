import Synchronization

/// Coalesces concurrent store operations into batches, so that many sagas advancing at the same
/// time share one round trip and one durable commit (group commit, done by the application).
///
/// A caller's request waits in a queue; a drain task takes up to `maxBatch` queued requests,
/// runs them with `execute`, and hands each caller its own result. At most
/// `maxConcurrentBatches` batches run at once. With nothing else queued, a request runs alone at
/// once, so batching adds no latency at low load: batches grow only while earlier ones are in
/// flight.
///
/// Requests carry a key (the saga id). A batch never holds two requests with the same key, and a
/// key is never in two running batches at once: a second change of one saga waits for the batch
/// of the first, so the outcome is the same as running them one after the other, and concurrent
/// batches of one process never lock the same row.
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
        var running = 0
        var keysInFlight: Set<String> = []
    }

    private let state = Mutex(State())
    private let maxBatch: Int
    private let maxConcurrentBatches: Int
    private let execute: Execute

    /// - Parameters:
    ///   - maxBatch: the most requests in one batch.
    ///   - maxConcurrentBatches: the most batches running at once.
    ///   - execute: runs a batch. It must return exactly one result per request.
    package init(maxBatch: Int, maxConcurrentBatches: Int, execute: @escaping Execute) {
        self.maxBatch = max(1, maxBatch)
        self.maxConcurrentBatches = max(1, maxConcurrentBatches)
        self.execute = execute
    }

    /// Queues a request and returns its result once its batch has run. Cancelling the caller does
    /// not withdraw a request: a store write that may already be on its way is awaited.
    package func submit(_ request: Request, key: String) async throws -> Response {
        try await withCheckedThrowingContinuation { continuation in
            let startDrain = state.withLock { state -> Bool in
                state.queue.append(Pending(key: key, request: request, continuation: continuation))
                guard state.running < maxConcurrentBatches else { return false }
                state.running += 1
                return true
            }
            if startDrain {
                // The drain outlives no request: it ends as soon as the queue holds nothing it can
                // take, and every queued request is taken by a running drain (see `next`). It runs
                // at high priority: every waiting caller's store round trip goes through it, so it
                // must not queue behind the callers' own work. Detached: the batch serves many
                // callers, so it must not carry the task-local values (such as the trace
                // context) of the one that happened to start it.
                Task.detached(priority: .high) { await self.drain() }
            }
        }
    }

    private func drain() async {
        var finished: [String] = []
        while let batch = next(releasing: finished) {
            let results = await execute(batch.map(\.request))
            for (index, pending) in batch.enumerated() {
                if index < results.count {
                    pending.continuation.resume(with: results[index])
                } else {
                    pending.continuation.resume(throwing: SagaError(.invalidState, "a store batch returned too few results"))
                }
            }
            finished = batch.map(\.key)
        }
    }

    /// Releases the keys of the batch that just ran and takes the next batch, or ends this drain
    /// (returns `nil`) when no queued request can be taken. A request left behind has its key in
    /// another running batch, whose drain takes it after releasing the key.
    private func next(releasing finished: [String]) -> [Pending]? {
        state.withLock { state -> [Pending]? in
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
                state.running -= 1
                return nil
            }
            state.queue = remaining
            state.keysInFlight.formUnion(batchKeys)
            return batch
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
