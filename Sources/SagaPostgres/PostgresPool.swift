import Foundation
import Logging
import PostgresNIO
import Synchronization

/// The store's `PostgresClient`, and — when the store owns it — its replacement by a fresh one
/// when it is wedged (see ``PostgresRecovery/shouldReplacePool(_:waitBound:)``).
///
/// Statements take the current client with ``current``, report that they hold one of its
/// connections (``leased(_:_:)`` / ``released(_:_:)``) and that they have waited long for one
/// (``waiting(_:for:)``). ``run()`` runs every client's `run()` as a child task — within the
/// store's own `run()`, never in an unstructured task — and decides on replacements: it probes
/// the server with a connection of its own and, when the server answers but the pool has not
/// given a connection for ``waitBound``, starts a fresh client and shuts the old one down. The
/// requests still queued on the old pool fail with `poolClosed`, and the statements behind them
/// run again on the new one.
final class PostgresPool: Sendable {
    /// A client and its generation (0 for the first, one more for each replacement).
    struct Current: Sendable {
        let client: PostgresClient
        let generation: Int
    }

    private struct State {
        var current: Current
        var createdAt: ContinuousClock.Instant
        /// Connections held by the store's statements, by generation.
        var leased: [Int: [ObjectIdentifier: PostgresConnection]] = [:]
        var lastProbe: ContinuousClock.Instant?
        var closing = false
        /// The running clients' shutdown signals, by generation.
        var retirements: [Int: RetireSignal] = [:]

        /// How many of the connections of `generation` that statements hold are still open. A
        /// statement on a connection the server closed fails soon (see ``PostgresStatement``),
        /// but until it gives the connection back it says nothing about the pool: it is not
        /// counted, so that it never holds up a replacement.
        func openLeases(_ generation: Int) -> Int {
            leased[generation, default: [:]].values.count { !$0.isClosed }
        }
    }

    /// How long a statement may wait for a connection of a pool that holds none before the
    /// pool is suspected of being wedged.
    let waitBound: Duration
    private let makeClient: (@Sendable () -> PostgresClient)?
    private let probe: (@Sendable () async -> Bool)?
    private let logger: Logger
    private let state: Mutex<State>
    private let events: AsyncStream<Int>
    private let eventSink: AsyncStream<Int>.Continuation

    /// A pool around `client`. With `makeClient` and `probe` (a store that owns its client),
    /// ``run()`` runs the client and replaces it when it is wedged; without them (a client of
    /// the caller's), the pool is never replaced.
    init(
        client: PostgresClient, waitBound: Duration = .seconds(2), logger: Logger,
        makeClient: (@Sendable () -> PostgresClient)? = nil, probe: (@Sendable () async -> Bool)? = nil
    ) {
        self.waitBound = waitBound
        self.makeClient = makeClient
        self.probe = probe
        self.logger = logger
        state = Mutex(State(current: Current(client: client, generation: 0), createdAt: .now))
        (events, eventSink) = AsyncStream<Int>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// The client statements use now.
    var current: Current { state.withLock { $0.current } }

    /// Whether the store is closing its pool (statements then stop retrying).
    var closing: Bool { state.withLock { $0.closing } }

    /// A statement got `connection` of `generation`.
    func leased(_ generation: Int, _ connection: PostgresConnection) {
        state.withLock { $0.leased[generation, default: [:]][ObjectIdentifier(connection)] = connection }
    }

    /// A statement gave back `connection` of `generation`.
    func released(_ generation: Int, _ connection: PostgresConnection) {
        state.withLock { _ = $0.leased[generation]?.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    /// A statement has waited `waited` for a connection of `generation` (reported from
    /// ``waitBound`` on, about twice a second): the supervisor looks at the pool.
    func waiting(_ generation: Int, for waited: Duration) {
        guard waited >= waitBound, makeClient != nil else { return }
        eventSink.yield(generation)
    }

    /// A statement's request failed at once because the pool's circuit breaker tripped: the
    /// supervisor looks at the pool.
    func suspect(_ generation: Int) {
        guard makeClient != nil else { return }
        eventSink.yield(generation)
    }

    /// Statements stop retrying from now on: the store is about to close the pool.
    func close() {
        state.withLock { $0.closing = true }
        eventSink.finish()
    }

    /// Runs the current client and every replacement until cancelled (when the store owns its
    /// client); cancelling it shuts every client down.
    func run() async {
        guard let makeClient, let probe else { return }
        await withDiscardingTaskGroup { group in
            let first = current
            let firstSignal = RetireSignal()
            state.withLock { $0.retirements[first.generation] = firstSignal }
            group.addTask { await Self.run(first.client, until: firstSignal) }
            for await generation in events {
                guard await shouldReplace(generation, probe: probe) else { continue }
                let client = makeClient()
                let signal = RetireSignal()
                let swapped: (old: RetireSignal?, next: Int)? = state.withLock { state in
                    guard !state.closing, state.current.generation == generation else { return nil }
                    let next = generation + 1
                    state.current = Current(client: client, generation: next)
                    state.createdAt = .now
                    state.retirements[next] = signal
                    state.leased[generation] = nil
                    return (state.retirements.removeValue(forKey: generation), next)
                }
                guard let (old, next) = swapped else { continue }
                logger.warning(
                    "PostgreSQL answers but the store's connection pool has had no connection for \(waitBound); replacing the pool",
                    metadata: ["store.pool.generation": "\(next)"])
                group.addTask { await Self.run(client, until: signal) }
                // Shuts the old pool down: its queued requests fail, and their statements run
                // again on the new pool.
                old?.fire()
            }
            // The store closes: every client shuts down (the group's tasks are cancelled with
            // the store's run, or retired here when the stream ended first).
            let signals = state.withLock { state in
                defer { state.retirements = [:] }
                return Array(state.retirements.values)
            }
            for signal in signals { signal.fire() }
        }
    }

    /// Runs `client` until `signal` fires or the task is cancelled.
    private static func run(_ client: PostgresClient, until signal: RetireSignal) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            group.addTask { await signal.wait() }
            _ = await group.next()
            group.cancelAll()
        }
    }

    /// Observes the pool of `generation` and probes the server (at most twice a second).
    private func shouldReplace(_ generation: Int, probe: @Sendable () async -> Bool) async -> Bool {
        let now = ContinuousClock.now
        let ready: Bool = state.withLock { state in
            guard !state.closing, state.current.generation == generation, state.openLeases(generation) == 0,
                state.createdAt.duration(to: now) >= waitBound
            else { return false }
            if let last = state.lastProbe, last.duration(to: now) < .milliseconds(500) { return false }
            state.lastProbe = now
            return true
        }
        guard ready else { return false }
        let answers = await probe()
        return state.withLock { state in
            PostgresRecovery.shouldReplacePool(
                .init(
                    longestWait: waitBound, leased: state.openLeases(generation),
                    age: state.createdAt.duration(to: .now), serverAnswers: answers),
                waitBound: waitBound) && state.current.generation == generation
        }
    }
}

/// A one-shot signal that one task waits for.
final class RetireSignal: Sendable {
    private let state = Mutex<(fired: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    /// Wakes the waiter (now or when it comes).
    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.fired = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns once fired, or when the task is cancelled.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let fired = state.withLock { state -> Bool in
                    if !state.fired { state.waiter = continuation }
                    return state.fired
                }
                if fired { continuation.resume() }
            }
        } onCancel: {
            fire()
        }
    }
}
