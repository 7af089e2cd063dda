import Logging
import PostgresNIO
import Synchronization

/// Connections the store keeps leased from postgres-nio's pool between its statements.
///
/// postgres-nio 1.33 arms an idle timer every time a connection returns to its pool (a task
/// sleeping for the idle timeout, cancelled at the next lease, whose memory and timer live on
/// until the timeout would have passed): after every batch, a few hundred times a second in a
/// busy participant. Its own remedy, `minimumConnections`, fails a precondition when a statement
/// asks for a connection while a kept one is closing (a restarting server). So the store keeps a
/// few connections itself: each slot's holder, a child task of the store's `run()`, leases a
/// connection with `withConnection` and keeps it until it breaks, the pool is replaced or the
/// store closes. A statement's attempt takes an idle held connection when there is one (never
/// waiting for it) and leases from the pool as before otherwise; it gives the connection back
/// after a success, and gives it up after any failure (the holder then leases a fresh one).
/// Measured: a participant's CPU per step about 15 % lower at C = 50 (`Docs/Operations.md`,
/// "Throughput").
final class PostgresHeldConnections: Sendable {
    /// A held connection an attempt has taken.
    struct Taken: Sendable {
        let connection: PostgresConnection
        let generation: Int
        fileprivate let slot: Int
    }

    private struct Slot {
        var connection: PostgresConnection?
        var generation = 0
        /// An attempt runs on it.
        var busy = false
        /// Resumed to give the connection back to the pool.
        var release: CheckedContinuation<Void, Never>?
        /// Give it back once no attempt runs on it.
        var releaseWhenIdle = false

        /// Ends the hold: returns the continuation to resume (once).
        mutating func endHold() -> CheckedContinuation<Void, Never>? {
            defer { self = Slot() }
            return release
        }
    }

    private struct State {
        var slots: [Slot]
        var closed = false
    }

    /// How many connections are held (0: none, every attempt leases from the pool).
    let count: Int
    private let state: Mutex<State>
    private let taken = Atomic(0)

    /// How many attempts have run on a held connection (for tests).
    var attemptsServed: Int { taken.load(ordering: .relaxed) }

    /// How many connections are held now (for tests).
    var holding: Int { state.withLock { $0.slots.count { $0.connection != nil } } }

    init(count: Int) {
        self.count = max(0, count)
        state = Mutex(State(slots: Array(repeating: Slot(), count: max(0, count))))
    }

    /// An idle, open held connection of `generation`, marked busy; `nil` when there is none.
    /// Held connections found closed or of an earlier generation are given back to their pool.
    func take(generation: Int) -> Taken? {
        let (taken, ended) = state.withLock { state -> (Taken?, [CheckedContinuation<Void, Never>]) in
            guard !state.closed else { return (nil, []) }
            var taken: Taken?
            var ended: [CheckedContinuation<Void, Never>] = []
            for index in state.slots.indices where !state.slots[index].busy {
                guard let connection = state.slots[index].connection else { continue }
                if connection.isClosed || state.slots[index].generation != generation {
                    if let release = state.slots[index].endHold() { ended.append(release) }
                    continue
                }
                if taken == nil {
                    state.slots[index].busy = true
                    taken = Taken(connection: connection, generation: generation, slot: index)
                }
            }
            return (taken, ended)
        }
        for release in ended { release.resume() }
        if taken != nil { self.taken.add(1, ordering: .relaxed) }
        return taken
    }

    /// Gives a taken connection back: kept for the next attempt after a success (`healthy`),
    /// given back to its pool otherwise, and when the store closes.
    func giveBack(_ taken: Taken, healthy: Bool) {
        let release = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.slots[taken.slot].connection === taken.connection else { return nil }
            state.slots[taken.slot].busy = false
            guard !healthy || taken.connection.isClosed || state.closed || state.slots[taken.slot].releaseWhenIdle else {
                return nil
            }
            return state.slots[taken.slot].endHold()
        }
        release?.resume()
    }

    /// Runs a holder per slot until cancelled (the store closes); each leases a connection of
    /// the current pool and keeps it until it is given back, then leases the next one.
    func run(pool: PostgresPool, logger: Logger) async {
        guard count > 0 else { return }
        await withDiscardingTaskGroup { group in
            for slot in 0..<count {
                group.addTask { await self.holder(slot: slot, pool: pool, logger: logger) }
            }
        }
        state.withLock { $0.closed = true }
    }

    private func holder(slot: Int, pool: PostgresPool, logger: Logger) async {
        var failures = 0
        while !Task.isCancelled && !pool.closing {
            let current = pool.current
            do {
                try await current.client.withConnection { connection in
                    failures = 0
                    await self.hold(connection, generation: current.generation, slot: slot)
                }
            } catch {
                // The pool gave no connection (the server is down, the pool was replaced): the
                // statements lease for themselves meanwhile.
                failures += 1
                logger.debug(
                    "could not lease a connection to hold; trying again",
                    metadata: ["store.held.slot": "\(slot)", "error": "\(PostgresSagaStore.describe(error))"])
                try? await Task.sleep(for: PostgresRecovery.backoff(after: failures))
            }
        }
    }

    /// Offers `connection` in `slot` until it is given back (broken, replaced, or the store
    /// closes). When the holder is cancelled while an attempt runs on it, the connection is
    /// given back once the attempt ends.
    private func hold(_ connection: PostgresConnection, generation: Int, slot: Int) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    guard !state.closed, !Task.isCancelled else { return true }
                    state.slots[slot] = Slot(connection: connection, generation: generation, release: continuation)
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let release = state.withLock { state -> CheckedContinuation<Void, Never>? in
                state.closed = true
                guard state.slots[slot].connection === connection else { return nil }
                guard !state.slots[slot].busy else {
                    state.slots[slot].releaseWhenIdle = true
                    return nil
                }
                return state.slots[slot].endHold()
            }
            release?.resume()
        }
    }
}
