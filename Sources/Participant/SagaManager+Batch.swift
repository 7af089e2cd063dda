import Foundation
import Tracing

/// One saga of a batch start: its id, and whether it was stored.
public struct SagaBatchStart: Sendable {
    /// The saga id (given by the caller, or a new UUID).
    public let id: SagaID
    /// ``SagaStartResult/started(_:)`` or ``SagaStartResult/alreadyStarted(_:)``; the store's
    /// error when this saga could not be stored (nothing was stored for it: start it again with
    /// the same id, which is idempotent).
    public let result: Result<SagaStartResult, any Error>

    /// Whether this saga is stored (new or from an earlier start).
    public var isStored: Bool {
        if case .success = result { true } else { false }
    }
}

extension SagaManager {
    /// Starts many sagas of one definition in one call.
    ///
    /// All sagas are decided first, then stored concurrently, so the store writes them in a few
    /// batched transactions (group commit) instead of one transaction each; then the first
    /// commands and `started` events of the sagas this call stored are published together,
    /// pipelined on the bus (the broker confirms them as a stream), and marked sent with one
    /// store write. The topology is declared and the definitions registered once.
    ///
    /// The same guarantees as ``start(_:payload:id:context:)``, saga by saga: a saga reported
    /// stored will run (what could not be published is sent by a participant's outbox relay);
    /// one whose result is a failure was not stored. Idempotent by id: a saga whose id was
    /// started before is reported ``SagaStartResult/alreadyStarted(_:)`` and nothing is sent
    /// for it, so a failed batch can be retried with the same ids; an id that belongs to a saga
    /// of another definition is a `duplicateSaga` failure.
    ///
    /// ```swift
    /// let orders: [JSONObject] = ...
    /// let starts = try await manager.start("order", payloads: orders)
    /// let failed = starts.filter { !$0.isStored }   // retry these with start(_:payloads:ids:)
    /// ```
    /// - Parameters:
    ///   - name: the saga definition's name.
    ///   - payloads: one payload per saga.
    ///   - ids: one id per payload (for idempotent retries); new UUIDs when `nil`.
    ///   - context: trace and correlation ids carried by every saga of the batch.
    ///   - maxConcurrentWrites: how many sagas are handed to the store at once (the store batches
    ///     what arrives together).
    /// - Returns: one ``SagaBatchStart`` per payload, in order.
    /// - Throws: `unknownDefinition`, `invalidPayload` when `ids` does not have one id per payload
    ///   or repeats one; the bus's error when the topology cannot be declared and the store's
    ///   when the definitions cannot be registered. In these cases nothing was stored.
    public func start(
        _ name: String, payloads: [JSONObject], ids: [SagaID]? = nil, context: [String: String] = [:], maxConcurrentWrites: Int = 256
    ) async throws -> [SagaBatchStart] {
        let definition = try engine.definitions.definition(named: name)
        let ids = try Self.batchIDs(ids, count: payloads.count)
        guard !payloads.isEmpty else { return [] }
        return try await withSpan("saga.start-batch \(name)", ofKind: .producer) { span in
            if span.isRecording {
                span.updateAttributes { attributes in
                    attributes["saga.name"] = name
                    attributes["saga.batch.count"] = payloads.count
                }
            }
            try await prepareToStart()
            let now = Date()
            let circuits = await engine.circuits(for: definition, logger: logger)
            let prepared = try zip(payloads, ids).map { payload, id in
                try prepareStart(definition, payload: payload, id: id, context: context, circuits: circuits, now: now)
            }
            let results = await store(prepared, maxConcurrent: max(1, maxConcurrentWrites))
            let created = zip(prepared, results).compactMap { start, result -> PreparedStart? in
                if case .success(.started) = result { start } else { nil }
            }
            for _ in created { engine.metrics.started(definition) }
            let failed = results.count - results.filter { if case .success = $0 { true } else { false } }.count
            logger.info(
                "sagas started in a batch",
                metadata: [
                    "saga.name": "\(name)", "saga.batch.count": "\(payloads.count)", "saga.batch.started": "\(created.count)",
                    "saga.batch.failed": "\(failed)",
                ])
            do {
                try await engine.publish(groups: created.map(\.outbox), logger: logger)
            } catch {
                // Stored is started: the relay sends what was not confirmed (engine.publish logged why).
                logger.warning(
                    "sagas stored but not every first command is confirmed yet; a participant's outbox relay will send them",
                    metadata: ["saga.name": "\(name)", "error": "\(error)"])
            }
            return zip(ids, results).map { SagaBatchStart(id: $0, result: $1) }
        }
    }

    /// Starts many sagas with payloads of the caller's own `Encodable` type (see
    /// ``start(_:payloads:ids:context:maxConcurrentWrites:)``).
    public func start<Payload: Encodable>(
        _ name: String, payloads: [Payload], ids: [SagaID]? = nil, context: [String: String] = [:], maxConcurrentWrites: Int = 256
    ) async throws -> [SagaBatchStart] {
        try await start(
            name, payloads: payloads.map { try JSONCoding.object(from: $0) }, ids: ids, context: context,
            maxConcurrentWrites: maxConcurrentWrites)
    }

    /// Stores the sagas, at most `maxConcurrent` at a time; one result per saga, in order.
    private func store(_ prepared: [PreparedStart], maxConcurrent: Int) async -> [Result<SagaStartResult, any Error>] {
        let store = engine.store
        var results = [Result<SagaStartResult, any Error>?](repeating: nil, count: prepared.count)
        await withTaskGroup(of: (Int, Result<SagaStartResult, any Error>).self) { group in
            var next = 0
            func addNext() {
                let index = next
                let start = prepared[index]
                next += 1
                group.addTask {
                    do {
                        switch try await store.create(start.state, outbox: start.outbox) {
                        case .created(let stored): return (index, .success(.started(stored)))
                        case .existing(let existing):
                            if let taken = SagaManager.idTaken(by: existing, starting: start.state.name) {
                                return (index, .failure(taken))
                            }
                            return (index, .success(.alreadyStarted(existing)))
                        }
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            while next < prepared.count && next < maxConcurrent { addNext() }
            for await (index, result) in group {
                results[index] = result
                if next < prepared.count { addNext() }
            }
        }
        return results.map { $0! }
    }

    /// The batch's ids: the caller's (one per payload, no repeats) or new UUIDs.
    static func batchIDs(_ ids: [SagaID]?, count: Int) throws -> [SagaID] {
        guard let ids else { return (0..<count).map { _ in UUID().uuidString.lowercased() } }
        guard ids.count == count else {
            throw SagaError(
                .invalidPayload, "a batch start got \(count) payload(s) and \(ids.count) id(s)",
                recoverySuggestion: "pass one id per payload, or none for new ids")
        }
        var seen = Set<SagaID>()
        for id in ids where !seen.insert(id).inserted {
            throw SagaError(
                .invalidPayload, "a batch start got the saga id '\(id)' twice",
                recoverySuggestion: "give each saga of the batch its own id")
        }
        return ids
    }
}
