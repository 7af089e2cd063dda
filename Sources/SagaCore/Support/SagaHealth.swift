public import Foundation
import Synchronization

/// What the parts of a process say about whether they can do their work: the broker connections,
/// the participants consuming their queues. Read by a readiness probe
/// (`PrometheusMetricsService` serves it at `/health/ready`) and by people.
///
/// Parts register a ``SagaHealth/Component`` and update it when their state changes (not per
/// message). The process is ready when every registered component is.
///
/// Like swift-metrics' backend, one registry serves the process by default (``process``); tests
/// and processes that run several independent systems can make their own and hand it to the
/// parts (`RabbitMQConfiguration.health`, `ParticipantConfiguration.health`).
public final class SagaHealth: Sendable {
    /// The registry SagaKit's parts report to unless told otherwise.
    public static let process = SagaHealth()

    private struct Entry {
        var name: String
        var ready: Bool
        var detail: String
        var since: Date
    }

    private struct Storage {
        var entries: [UInt64: Entry] = [:]
        var nextID: UInt64 = 0
    }

    private let storage = Mutex(Storage())

    /// An empty registry.
    public init() {}

    /// Adds a component, not ready until it says so.
    /// - Parameters:
    ///   - name: what it is, for people (`broker connection (publisher)`, `participant 'payment'`).
    ///   - detail: what it is doing (`connecting to 127.0.0.1:5672`).
    /// - Returns: the handle to update it with; ``Component/remove()`` takes it out again.
    public func register(_ name: String, detail: String) -> Component {
        let id = storage.withLock { storage in
            storage.nextID += 1
            storage.entries[storage.nextID] = Entry(name: name, ready: false, detail: detail, since: Date())
            return storage.nextID
        }
        return Component(registry: self, id: id)
    }

    /// What every component says now, in the order they registered.
    public func report() -> SagaHealthReport {
        let entries = storage.withLock { $0.entries.sorted { $0.key < $1.key }.map(\.value) }
        return SagaHealthReport(
            components: entries.map { .init(name: $0.name, ready: $0.ready, detail: $0.detail, since: $0.since) })
    }

    fileprivate func update(_ id: UInt64, ready: Bool, detail: String) {
        storage.withLock { storage in
            guard var entry = storage.entries[id] else { return }
            if entry.ready != ready { entry.since = Date() }
            entry.ready = ready
            entry.detail = detail
            storage.entries[id] = entry
        }
    }

    fileprivate func remove(_ id: UInt64) {
        _ = storage.withLock { $0.entries.removeValue(forKey: id) }
    }

    /// One part's entry in a ``SagaHealth`` registry.
    public struct Component: Sendable {
        let registry: SagaHealth
        let id: UInt64

        /// Says the part can do its work, and what it does.
        public func ready(_ detail: String) { registry.update(id, ready: true, detail: detail) }

        /// Says the part cannot do its work now, and why (no secrets: this is served over HTTP).
        public func notReady(_ detail: String) { registry.update(id, ready: false, detail: detail) }

        /// Takes the part out of the registry (it stopped).
        public func remove() { registry.remove(id) }
    }
}

/// What a ``SagaHealth`` registry's components said at one moment.
public struct SagaHealthReport: Sendable, Equatable, Codable {
    /// One component's state.
    public struct Component: Sendable, Equatable, Codable {
        /// What it is.
        public var name: String
        /// Whether it can do its work.
        public var ready: Bool
        /// What it does, or why it cannot.
        public var detail: String
        /// Since when it has been ready (or not).
        public var since: Date
    }

    /// The components, in the order they registered.
    public var components: [Component]

    /// Whether the process can do its work: at least one component, and every one ready. A
    /// process with nothing registered yet is starting, not ready.
    public var isReady: Bool { !components.isEmpty && components.allSatisfy(\.ready) }

    /// The report as JSON (`{"status":"ready"|"not ready","components":[…]}`), dates in ISO 8601.
    public func json() -> String {
        struct Body: Encodable {
            var status: String
            var components: [Component]
        }
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = Body(status: isReady ? "ready" : "not ready", components: components)
        return (try? encoder.encode(body)).map { String(decoding: $0, as: UTF8.self) } ?? #"{"status":"unknown"}"#
    }
}
