import SagaCore
import Synchronization

/// Work handed from async callers to a connection thread.
enum Command: Sendable {
    case publish(PublishRequest)
    case declare(Topology, ControlReply)
    case deleteQueue(String, ControlReply)
    case deleteExchange(String, ControlReply)
    case consume(ConsumerRegistration, ControlReply)
    case cancelConsumer(id: UInt64)
    case settle(channel: UInt16, epoch: UInt64, tag: UInt64, Settlement)
    /// Graceful shutdown; the continuation (if any) resumes when the thread has finished.
    case shutdown(CheckedContinuation<Void, Never>?)
}

/// The answer to a declaration, a deletion or a consumer start, resumed once: by the connection
/// thread when the broker answered, or earlier by the caller's cancellation (a caller is not left
/// waiting while the connection is down; the thread's later answer then goes nowhere).
final class ControlReply: Sendable {
    private enum State {
        case waiting(CheckedContinuation<Void, any Error>?)
        case answered
    }
    private let state = Mutex<State>(.waiting(nil))

    /// Waits for the answer; `send` hands the reply to the connection thread. Cancelling the task
    /// resumes it with `CancellationError`.
    static func await(_ send: @Sendable (ControlReply) -> Void) async throws {
        let reply = ControlReply()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let cancelled = reply.state.withLock { state -> Bool in
                    if case .answered = state { return true }
                    state = .waiting(continuation)
                    return false
                }
                if cancelled { continuation.resume(throwing: CancellationError()) } else { send(reply) }
            }
        } onCancel: {
            reply.resume(with: .failure(CancellationError()))
        }
    }

    /// Answers; only the first answer counts.
    func resume(with result: Result<Void, any Error>) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>?? in
            guard case .waiting(let continuation) = state else { return nil }
            state = .answered
            return continuation
        }
        if let continuation { continuation?.resume(with: result) }
    }

    /// The broker answered.
    func resume() { resume(with: .success(())) }

    /// The operation failed.
    func resume(throwing error: any Error) { resume(with: .failure(error)) }
}

/// One publish waiting for its confirm.
struct PublishRequest: Sendable {
    var message: OutgoingMessage
    var continuation: CheckedContinuation<Void, any Error>
    var enqueued: ContinuousClock.Instant
    /// Sent again once already because the broker had lost part of the recorded topology it
    /// needs (a second such failure is the publisher's).
    var resentAfterRepair = false
}

/// A consumer as the bus knows it; survives reconnects.
struct ConsumerRegistration: Sendable {
    var id: UInt64
    var queue: String
    var prefetch: UInt16
    var continuation: DeliveryStream.Continuation
    /// The epoch of the channel the consumer runs on now (0 while it has none), read by its
    /// deliveries' settlers (``RabbitMQSettler/isStillHeld``).
    let liveEpoch = LiveEpoch()
}

/// The epoch of a consumer's current channel, written by the connection thread and read by any
/// thread.
final class LiveEpoch: Sendable {
    private let value = Atomic<UInt64>(0)

    var current: UInt64 { value.load(ordering: .relaxed) }

    func set(_ epoch: UInt64) { value.store(epoch, ordering: .relaxed) }
}

/// The hand-off point between async callers (any thread) and one connection thread.
///
/// Callers append commands under a mutex; the eventfd is written only when the connection thread said it is
/// about to sleep in poll(), so a busy thread is not woken by a syscall per command.
final class Mailbox: Sendable {
    private struct State {
        var commands: [Command] = []
        var sleeping = false
        var closed = false
    }

    private let state = Mutex(State())
    let wake: WakeSignal

    init() throws(BusError) {
        wake = try WakeSignal()
    }

    /// Queues a command. Returns `false` when the connection thread has exited.
    @discardableResult
    func send(_ command: Command) -> Bool {
        let (accepted, wakeUp) = state.withLock { state -> (Bool, Bool) in
            guard !state.closed else { return (false, false) }
            state.commands.append(command)
            let wakeUp = state.sleeping
            state.sleeping = false
            return (true, wakeUp)
        }
        if wakeUp { wake.signal() }
        return accepted
    }

    /// Takes every queued command, in order.
    func takeAll() -> [Command] {
        state.withLock { state in
            guard !state.commands.isEmpty else { return [] }
            var taken: [Command] = []
            swap(&taken, &state.commands)
            return taken
        }
    }

    /// Called by the connection thread before poll(): returns `false` (do not sleep) when commands are waiting.
    func prepareToSleep() -> Bool {
        state.withLock { state in
            guard state.commands.isEmpty else { return false }
            state.sleeping = true
            return true
        }
    }

    /// Called by the connection thread after poll().
    func awake() {
        state.withLock { $0.sleeping = false }
    }

    /// Refuses further commands and returns those still queued.
    func close() -> [Command] {
        state.withLock { state in
            state.closed = true
            var taken: [Command] = []
            swap(&taken, &state.commands)
            return taken
        }
    }
}

/// Settles one RabbitMQ delivery by handing the settlement to the consumer connection's thread.
///
/// The `epoch` identifies the channel the delivery came on: after a reconnect (or a channel reopen) the epoch
/// differs and the settlement is dropped, because the broker has already requeued the message.
final class RabbitMQSettler: DeliverySettler {
    private let mailbox: Mailbox
    private let channel: UInt16
    private let epoch: UInt64
    private let tag: UInt64
    private let liveEpoch: LiveEpoch
    private let settled = Atomic<Bool>(false)

    init(mailbox: Mailbox, channel: UInt16, epoch: UInt64, tag: UInt64, liveEpoch: LiveEpoch) {
        self.mailbox = mailbox
        self.channel = channel
        self.epoch = epoch
        self.tag = tag
        self.liveEpoch = liveEpoch
    }

    /// Whether the channel the delivery came on is still its consumer's: not after a reconnect,
    /// a lost connection or a channel reopened (the broker has requeued the delivery).
    var isStillHeld: Bool { liveEpoch.current == epoch }

    func settle(_ settlement: Settlement) async throws {
        guard !settled.exchange(true, ordering: .relaxed) else { return }
        mailbox.send(.settle(channel: channel, epoch: epoch, tag: tag, settlement))
    }

    /// Marks the delivery settled by the connection thread itself (it handed the message back
    /// without yielding it), so that its release does not settle it again.
    func markSettled() {
        settled.store(true, ordering: .relaxed)
    }

    deinit {
        // Released without a settlement (left in the buffer of a stream that ended, or dropped by
        // a consumer): back to the queue now. Its consumer's channel stays open until its
        // deliveries are settled, so this is what returns them (see `ConnectionWorker`).
        if !settled.load(ordering: .relaxed) {
            mailbox.send(.settle(channel: channel, epoch: epoch, tag: tag, .nack(requeue: true)))
        }
    }
}

/// Every topology declared through the bus, re-declared after a reconnect.
final class TopologyRegistry: Sendable {
    private let recorded = Mutex(Topology())
    /// Queues deleted through this bus (and not declared since): a consumer the broker cancels because of such a
    /// deletion ends cleanly instead of declaring the queue again.
    private let deleted = Mutex(Set<String>())

    func record(_ topology: Topology) {
        deleted.withLock { $0.subtract(topology.queues.map(\.name)) }
        recorded.withLock { all in
            for exchange in topology.exchanges where !all.exchanges.contains(exchange) {
                all.exchanges.append(exchange)
            }
            for queue in topology.queues {
                if let index = all.queues.firstIndex(where: { $0.name == queue.name }) {
                    all.queues[index] = queue
                } else {
                    all.queues.append(queue)
                }
            }
            for binding in topology.bindings where !all.bindings.contains(binding) { all.bindings.append(binding) }
        }
    }

    func forgetQueue(_ name: String) {
        deleted.withLock { _ = $0.insert(name) }
        recorded.withLock { all in
            all.queues.removeAll { $0.name == name }
            all.bindings.removeAll { $0.queue == name }
        }
    }

    func forgetExchange(_ name: String) {
        recorded.withLock { all in
            all.exchanges.removeAll { $0.name == name }
            all.bindings.removeAll { $0.exchange == name }
        }
    }

    var current: Topology { recorded.withLock { $0 } }

    /// `true` when `queue` was deleted through this bus and not declared again since.
    func wasDeleted(_ queue: String) -> Bool { deleted.withLock { $0.contains(queue) } }
}
