import Foundation
import Synchronization

/// In-process orchestration: the commands a participant publishes for itself — a saga's next
/// step whose handler this participant has — run here instead of making a broker round trip
/// (``ParticipantConfiguration/inProcessSteps``).
///
/// Nothing else changes: the command is stored in the outbox with the transition that decides
/// it, and the step runs through the same code as a delivery (loading the saga, the
/// current-command check, the handler, the commit of its outcome). Only the transport differs:
/// the outbox message is handed to this participant instead of the broker, and it is marked
/// sent only once its step has been processed. So a crash in between leaves it unsent, and any
/// instance's outbox relay publishes it through the broker after the grace period (and the
/// reaper re-sends the step of a saga that stalls): the saga finishes either way.
///
/// At most `limit` commands wait or run in process at once; beyond that (and once the
/// participant stops) commands go through the broker as usual.
final class LocalStepDispatch: Sendable {
    /// Commands this participant has handlers for.
    let commands: Set<String>
    /// The topology's commands exchange: delayed commands (retries) go through the broker's delay
    /// queues, as usual.
    let commandsExchange: String
    /// The participant's queue (named in the synthetic deliveries' logs and dead letters).
    let queue: String
    /// How many commands may wait or run in process at once.
    let limit: Int
    /// Commands taken for this participant, in order.
    let messages: AsyncStream<OutboxMessage>
    private let continuation: AsyncStream<OutboxMessage>.Continuation
    private let state = Mutex(State())

    private struct State {
        var inFlight = 0
        var closed = false
    }

    init(commands: Set<String>, commandsExchange: String, queue: String, limit: Int) {
        self.commands = commands
        self.commandsExchange = commandsExchange
        self.queue = queue
        self.limit = max(1, limit)
        (messages, continuation) = AsyncStream.makeStream(of: OutboxMessage.self, bufferingPolicy: .unbounded)
    }

    /// Takes an outbox message to run in this process, or leaves it to the broker (`false`): an
    /// event, a delayed command, a command without a handler here, too many in process, or the
    /// participant is stopping.
    func take(_ message: OutboxMessage) -> Bool {
        guard message.exchange == commandsExchange, commands.contains(message.routingKey) else { return false }
        let reserved = state.withLock { state -> Bool in
            guard !state.closed, state.inFlight < limit else { return false }
            state.inFlight += 1
            return true
        }
        guard reserved else { return false }
        if case .enqueued = continuation.yield(message) { return true }
        release()
        return false
    }

    /// One taken command has been processed.
    func release() {
        state.withLock { $0.inFlight -= 1 }
    }

    /// Takes no more commands; the ones taken are still delivered by ``messages``.
    func close() {
        state.withLock { $0.closed = true }
        continuation.finish()
    }

    /// The delivery a taken command is processed as.
    func delivery(of message: OutboxMessage, engine: SagaEngine) -> Delivery {
        Delivery(
            exchange: message.exchange, routingKey: message.routingKey, queue: queue, body: message.bodyToPublish,
            headers: MessageHeaders(message.headers), messageId: message.id, contentType: SagaHeaders.contentType,
            type: message.routingKey, correlationId: message.sagaID, persistent: true,
            settler: LocalSettler(message: message, engine: engine, dispatch: self))
    }
}

/// Settles an in-process command: acknowledged, it is marked sent (its step is done);
/// requeued or rejected, it is published through the broker after all, so that the broker's
/// path (another instance, the delay queues, dead-lettering) takes over.
private final class LocalSettler: DeliverySettler {
    let message: OutboxMessage
    let engine: SagaEngine
    let dispatch: LocalStepDispatch
    private let settled = Atomic(false)

    init(message: OutboxMessage, engine: SagaEngine, dispatch: LocalStepDispatch) {
        self.message = message
        self.engine = engine
        self.dispatch = dispatch
    }

    func settle(_ settlement: Settlement) async throws {
        guard !settled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        defer { dispatch.release() }
        if settlement != .ack {
            // Left unsent when this fails: the outbox relay publishes it.
            try await engine.bus.publish(SagaMessages.outgoing(message))
        }
        if engine.sentMarker?.enqueue([message.id]) != true {
            try await engine.store.markSent([message.id])
        }
    }
}
