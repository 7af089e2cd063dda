import Synchronization

/// The lifecycle of a store that is a swift-service-lifecycle `Service` (the SQL stores): created
/// without I/O, started by its `run()`, stopped by graceful shutdown, cancellation or its
/// `shutdown()`.
///
/// Operations call ``waitUntilRunning()`` first: at once when the store runs; otherwise they wait
/// until it does, at most the startup timeout, and then fail with `storeUnavailable` saying that
/// the store must be run. `run()` calls ``begin()``, ``started()`` (or ``failed(_:)``), then
/// ``waitForStopRequest()``, and ``finished()`` once it has closed everything; ``shutdown()``
/// requests the stop and waits for that.
package final class StoreLifecycle: Sendable {
    private enum Phase {
        /// Created; `run()` has not been called.
        case idle
        /// `run()` is opening the store.
        case starting
        /// Serving operations.
        case running
        /// `run()` failed to open the store.
        case failed(SagaError)
        /// Stopping or stopped: no more operations.
        case stopped
    }

    private struct State {
        var phase = Phase.idle
        var began = false
        var stopRequested = false
        var finished = false
        var nextWaiter = 0
        /// Operations waiting for the store to run.
        var readyWaiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        /// `run()` waiting for a stop request.
        var stopWaiter: CheckedContinuation<Void, Never>?
        /// ``shutdown()`` calls waiting for `run()` to finish.
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    /// How the store is named in errors (`the SQLite store /var/lib/sagas.db`).
    private let name: String
    private let startupTimeout: Duration

    /// - Parameters:
    ///   - name: the store as error messages name it, such as `the PostgreSQL store at db:5432/shop`.
    ///   - startupTimeout: how long an operation waits for the store to run before failing.
    package init(name: String, startupTimeout: Duration) {
        self.name = name
        self.startupTimeout = startupTimeout
    }

    // MARK: Operations

    /// Returns once the store runs; throws when it does not run within the startup timeout, when
    /// it failed to start (its error), or when it has stopped.
    package func waitUntilRunning() async throws {
        let now = state.withLock { state -> Result<Bool, SagaError> in
            switch state.phase {
            case .running: .success(true)
            case .idle, .starting: .success(false)
            case .failed(let error): .failure(error)
            case .stopped: .failure(stoppedError)
            }
        }
        guard try now.get() == false else { return }
        let timeout = startupTimeout
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { try await self.waitForStart() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return false
            }
            defer { group.cancelAll() }
            guard try await group.next() == true else { throw notRunningError }
        }
    }

    /// Whether operations are served now (without waiting).
    package var isRunning: Bool {
        state.withLock { state in
            if case .running = state.phase { return true }
            return false
        }
    }

    /// The error of an operation made while the store does not run.
    package var notRunningError: SagaError {
        SagaError(
            .storeUnavailable,
            "\(name) is not running: add it to your ServiceGroup or use withRunning/open (waited \(startupTimeout))",
            recoverySuggestion:
                "the store connects in its run() method: list it in your ServiceGroup before the services that use it, or wrap its use in store.withRunning { store in … }"
        )
    }

    private var stoppedError: SagaError {
        SagaError(
            .storeUnavailable, "\(name) has shut down",
            recoverySuggestion: "keep the store running while the services that use it run (list it first in the ServiceGroup)")
    }

    private func waitForStart() async throws -> Bool {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let immediate = state.withLock { state -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    switch state.phase {
                    case .running: return .success(())
                    case .failed(let error): return .failure(error)
                    case .stopped: return .failure(stoppedError)
                    case .idle, .starting:
                        state.readyWaiters[id] = continuation
                        return nil
                    }
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.readyWaiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
        return true
    }

    // MARK: run()

    /// Called by `run()` first. Returns `false` when the store was shut down before it ran:
    /// `run()` then returns at once (after ``finished()``).
    /// - Throws: `invalidState` when the store was already run (a store runs once).
    package func begin() throws -> Bool {
        try state.withLock { state in
            guard !state.began else {
                throw SagaError(
                    .invalidState, "\(name) was already run; a store runs once",
                    recoverySuggestion: "create another store instance")
            }
            state.began = true
            guard !state.stopRequested else { return false }
            state.phase = .starting
            return true
        }
    }

    /// The store is open: operations proceed.
    package func started() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard case .starting = state.phase else { return [] }
            state.phase = .running
            defer { state.readyWaiters = [:] }
            return Array(state.readyWaiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The store could not be opened: waiting and later operations fail with `error`.
    package func failed(_ error: SagaError) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.phase = .failed(error)
            defer { state.readyWaiters = [:] }
            return Array(state.readyWaiters.values)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// Returns when ``shutdown()`` (or ``requestStop()``) was called; at once when it already was.
    package func waitForStopRequest() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.stopRequested { return true }
                state.stopWaiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Asks `run()` to stop (graceful shutdown, cancellation, ``shutdown()``). Operations that
    /// start from now on fail; those already running finish.
    package func requestStop() {
        let (waiter, readyWaiters) = state.withLock {
            state -> (CheckedContinuation<Void, Never>?, [CheckedContinuation<Void, any Error>]) in
            state.stopRequested = true
            if case .failed = state.phase {} else { state.phase = .stopped }
            defer {
                state.stopWaiter = nil
                state.readyWaiters = [:]
            }
            return (state.stopWaiter, Array(state.readyWaiters.values))
        }
        waiter?.resume()
        for readyWaiter in readyWaiters { readyWaiter.resume(throwing: stoppedError) }
    }

    /// Called by `run()` last, once everything is closed.
    package func finished() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            if case .failed = state.phase {} else { state.phase = .stopped }
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: shutdown()

    /// Requests the stop and waits until `run()` has closed the store; returns at once when the
    /// store never ran (it then never will).
    /// Runs `run` (the store's `run()`) while `body` runs, then shuts the store down: the shape of
    /// both SQL stores' `withRunning`. Throws what `body` throws, or `run`'s error when the store
    /// could not start (it explains a failure best).
    package func withRunning<Result>(
        _ run: @escaping @Sendable () async throws -> Void, _ body: () async throws -> Result
    ) async throws -> Result {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await run() }
            let result: Swift.Result<Result, any Error>
            do {
                try await waitUntilRunning()
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            await shutdown()
            try await group.waitForAll()
            return try result.get()
        }
    }

    package func shutdown() async {
        requestStop()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                // Never ran: a later run() finds the stop request and returns at once.
                if !state.began || state.finished { return true }
                state.finishWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}
