import Foundation
import Participant
import Synchronization

/// Fans the saga lifecycle events out to every open server-sent-events stream.
final class EventBroadcaster: Sendable {
    /// What a stream receives.
    enum Item: Sendable {
        case event(SagaLifecycleEvent)
        /// A comment that keeps the connection open (and finds closed ones).
        case heartbeat
        /// Whether the console receives events (its subscription is up).
        case connected(Bool)
    }

    private struct State {
        var nextID = 0
        var streams: [Int: AsyncStream<Item>.Continuation] = [:]
        var connected = false
        var closed = false
    }

    private let state = Mutex(State())

    /// Whether the subscription to the events exchange is up.
    var isConnected: Bool { state.withLock { $0.connected } }

    /// How many streams are open.
    var streamCount: Int { state.withLock { $0.streams.count } }

    /// A new stream of items; it ends when the client goes away or the console shuts down.
    func subscribe() -> AsyncStream<Item> {
        let (stream, continuation) = AsyncStream<Item>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let id = state.withLock { state -> Int? in
            guard !state.closed else { return nil }
            state.nextID += 1
            state.streams[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.streams.removeValue(forKey: id) }
        }
        continuation.yield(.connected(isConnected))
        return stream
    }

    func publish(_ item: Item) {
        let streams = state.withLock { state -> [AsyncStream<Item>.Continuation] in
            if case .connected(let up) = item { state.connected = up }
            return Array(state.streams.values)
        }
        for stream in streams { stream.yield(item) }
    }

    /// Ends every stream, and every later one at once.
    func close() {
        let streams = state.withLock { state -> [AsyncStream<Item>.Continuation] in
            state.closed = true
            defer { state.streams = [:] }
            return Array(state.streams.values)
        }
        for stream in streams { stream.finish() }
    }
}
