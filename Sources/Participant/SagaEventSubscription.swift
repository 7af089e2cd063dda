import Foundation
import Synchronization

/// Saga lifecycle events as they are published, from a queue of the subscriber's own.
///
/// ```swift
/// // Every event of the `order` definition; the queue goes away with the process.
/// let events = try await SagaEventSubscription.subscribe(bus: bus, topology: topology, bindingKeys: ["order.#"])
/// for try await event in events where event.kind == .needsAttention {
///     logger.error("saga \(event.sagaID) needs attention: \(event.error ?? "")")
/// }
/// ```
///
/// Events are delivered at least once (the same ``SagaLifecycleEvent/id`` can arrive twice
/// after a crash) and, across steps, not necessarily in order: order one saga's events by
/// ``SagaLifecycleEvent/sagaVersion``. A subscriber that is away misses events: read the store
/// for the state (``SagaManager/state(of:)``), and use a durable queue of your own (bound to the
/// events exchange, ``SagaTopology/eventsExchange``) when nothing may be missed.
public struct SagaEventSubscription: AsyncSequence, Sendable {
    /// The events.
    public typealias Element = SagaLifecycleEvent

    /// The queue this subscription consumes.
    public let queue: String
    let deliveries: DeliveryStream
    let logger: Logger

    /// Declares a private queue bound to the topology's events exchange with `bindingKeys`
    /// (topic patterns over `<definition>.<kind>`: `#` for every event, `order.#`,
    /// `*.completed`) and starts consuming it.
    ///
    /// The queue is not durable and the broker deletes it `expires` after its consumer went
    /// away; the bus re-declares and resumes it after a reconnect (events published meanwhile are
    /// missed).
    /// - Throws: the bus's error when the queue cannot be declared or consumed.
    public static func subscribe(
        bus: any MessageBus, topology: SagaTopology, bindingKeys: [String] = ["#"], expires: Duration = .seconds(60),
        logger: Logger = Logger(label: "sagakit.events")
    ) async throws -> SagaEventSubscription {
        let queue = "\(topology.prefix).events.subscriber.\(UUID().uuidString.prefix(12).lowercased())"
        try await bus.declare(
            topology.shared.merging(
                Topology(
                    queues: [QueueSpec(name: queue, kind: .classic, durable: false, expires: expires)],
                    bindings: bindingKeys.map { BindingSpec(queue: queue, exchange: topology.eventsExchange, routingKey: $0) })))
        let deliveries = try await bus.consume(queue: queue, prefetch: 256)
        return SagaEventSubscription(queue: queue, deliveries: deliveries, logger: logger)
    }

    /// Makes the iterator (one per subscription).
    public func makeAsyncIterator() -> Iterator {
        Iterator(base: deliveries.makeAsyncIterator(), logger: logger)
    }

    /// Decodes deliveries into events; acknowledges each one as it is read. A message that is not
    /// an event is logged and skipped.
    public struct Iterator: AsyncIteratorProtocol {
        var base: DeliveryStream.AsyncIterator
        let logger: Logger

        /// The next event; `nil` when the bus shut down.
        public mutating func next() async throws -> SagaLifecycleEvent? {
            while let delivery = try await base.next() {
                try? await delivery.ack()
                do {
                    return try SagaLifecycleEvent(jsonBytes: delivery.body)
                } catch {
                    logger.warning(
                        "skipped a message on the events exchange that is not a saga lifecycle event",
                        metadata: ["routingKey": "\(delivery.routingKey)", "error": "\(error)"])
                }
            }
            return nil
        }
    }
}

/// Wakes the ``SagaManager`` calls that wait for sagas (``SagaManager/outcome(of:timeout:)``,
/// ``SagaManager/updates(of:)``) when an event of their saga arrives. Fed by
/// ``SagaManager/run()``; without it running, the waiters read the store periodically.
final class SagaEventHub: Sendable {
    private struct Waiter {
        let signal: WakeSignal
        let terminalOnly: Bool
        /// Receives the saga's terminal event, for a waiter that returns it
        /// (``SagaManager/startAndWait(_:payload:id:context:timeout:)``).
        let ending: SagaEnding?
        /// Its fallback wake-up in ``SagaEventHub/ticker`` (see ``SagaEventHub/wake(_:token:at:)``).
        var wakeID: Int?
    }

    private struct State {
        var listening = false
        /// Counts the times listening began: events between two periods may have been missed.
        var period = 0
        var nextToken = 0
        var waiters: [SagaID: [Int: Waiter]] = [:]
        /// The sagas this manager started while listening, with the period they started in.
        var started = RecentKeys<Int>()
        /// The sagas whose terminal event arrived lately.
        var ended = RecentKeys<Void>()
    }

    private let state = Mutex(State())

    /// Whether events are being received (``SagaManager/run()`` is consuming).
    var isListening: Bool { state.withLock { $0.listening } }

    func setListening(_ listening: Bool) {
        state.withLock { state in
            if listening && !state.listening { state.period += 1 }
            state.listening = listening
        }
    }

    /// This manager stored the saga `id` (remembered only while listening).
    func noteStarted(_ id: SagaID) {
        state.withLock { state in
            if state.listening { state.started[id] = state.period }
        }
    }

    /// Whether the saga is known not to have ended yet: this manager started it while listening,
    /// has listened without a break since, and no terminal event of it has arrived. Then its end
    /// is still to come, and a waiter subscribed now will hear it: ``SagaManager/outcome(of:timeout:)``
    /// need not read the store before it waits. `false` when the hub cannot tell (a saga
    /// started elsewhere or long ago, a reconnect since): the caller reads the store.
    func hasNotEnded(_ id: SagaID) -> Bool {
        state.withLock { state in
            state.listening && state.started[id] == state.period && state.ended[id] == nil
        }
    }

    /// How many sagas the hub remembers as started and as ended (for tests: both are bounded).
    var remembered: (started: Int, ended: Int) { state.withLock { ($0.started.count, $0.ended.count) } }

    /// Signals `signal` on each event of the saga (only terminal ones with `terminalOnly`) until
    /// ``unsubscribe(_:token:)`` with the returned token.
    /// With `ending`, the terminal event itself is kept there before `signal` is signalled.
    func subscribe(_ id: SagaID, signal: WakeSignal, terminalOnly: Bool, ending: SagaEnding? = nil) -> Int {
        state.withLock { state in
            state.nextToken += 1
            state.waiters[id, default: [:]][state.nextToken] = Waiter(signal: signal, terminalOnly: terminalOnly, ending: ending)
            return state.nextToken
        }
    }

    func unsubscribe(_ id: SagaID, token: Int) {
        state.withLock { state in
            if let wakeID = state.waiters[id]?.removeValue(forKey: token)?.wakeID { ticker.cancel(wakeID) }
            if state.waiters[id]?.isEmpty == true { state.waiters[id] = nil }
        }
    }

    func deliver(_ event: SagaLifecycleEvent) {
        let waiters = state.withLock { state in
            if event.kind.isTerminal { state.ended[event.sagaID] = () }
            return (state.waiters[event.sagaID]?.values ?? [:].values).filter { !$0.terminalOnly || event.kind.isTerminal }
        }
        for waiter in waiters {
            if event.kind.isTerminal { waiter.ending?.set(event) }
            waiter.signal.signal()
        }
    }

    /// How many sagas are waited for (for tests).
    var waitedForCount: Int { state.withLock { $0.waiters.count } }

    /// Wakes waiters whose fallback interval passed, while ``runWakeTicks()`` runs.
    let ticker = DeadlineTicker(tick: .milliseconds(100))

    /// Asks for the waiter `token` of saga `id` to be signalled at `instant` if no event comes
    /// first (its fallback interval), by the hub's ticker rather than by a timer of its own.
    /// Returns `false` (nothing asked) unless events are received and ``runWakeTicks()`` runs.
    func wake(_ id: SagaID, token: Int, at instant: ContinuousClock.Instant) -> Bool {
        state.withLock { state in
            guard state.listening, let waiter = state.waiters[id]?[token] else { return false }
            if let earlier = waiter.wakeID { ticker.cancel(earlier) }
            let signal = waiter.signal
            guard let wakeID = ticker.schedule(at: instant, { signal.signal() }) else { return false }
            state.waiters[id]?[token]?.wakeID = wakeID
            return true
        }
    }

    /// Withdraws a wake-up asked for with ``wake(_:token:at:)`` (an event came first).
    func cancelWake(_ id: SagaID, token: Int) {
        state.withLock { state in
            guard let wakeID = state.waiters[id]?[token]?.wakeID else { return }
            ticker.cancel(wakeID)
            state.waiters[id]?[token]?.wakeID = nil
        }
    }

    /// Runs the waiters' fallback wake-ups until cancelled (``SagaManager/run()`` does): one task
    /// for every waiting call instead of a timer per call. When it ends, the waiters it would
    /// have woken are woken now (they look at the store and wait again, with a timer of their
    /// own).
    func runWakeTicks() async {
        await ticker.run()
    }
}

/// The keys set lately, at most about `2 × generation` of them: when the current generation is
/// full it becomes the previous one and the one before is dropped (a key set long ago may be
/// forgotten; one set within the last `generation` is not).
struct RecentKeys<Value> {
    var generation = 4096
    private var current: [SagaID: Value] = [:]
    private var previous: [SagaID: Value] = [:]

    subscript(key: SagaID) -> Value? {
        get { current[key] ?? previous[key] }
        set {
            if current.count >= generation, current[key] == nil {
                previous = current
                current = [:]
            }
            current[key] = newValue
        }
    }

    var count: Int { current.count + previous.count }
}

/// Where the hub leaves a saga's terminal event for the call waiting for it (the first one that
/// arrives: a copy the outbox relay sent again is the same event).
final class SagaEnding: Sendable {
    private let event = Mutex<SagaLifecycleEvent?>(nil)

    func set(_ value: SagaLifecycleEvent) { event.withLock { $0 = $0 ?? value } }

    var value: SagaLifecycleEvent? { event.withLock { $0 } }
}

/// A wake-up that is not lost when it comes before the wait: ``signal()`` wakes the current
/// ``wait()``, or the next one. A cancelled wait returns at once and leaves the signal usable.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.pending || Task.isCancelled {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}
