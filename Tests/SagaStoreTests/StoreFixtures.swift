import Foundation
import SagaCore
import SagaSQLite
import Testing

/// The stores every conformance test runs against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// A store under test, with a second handle on the same data (another connection pool for the
/// SQL stores).
struct StoreUnderTest: Sendable {
    let store: any SagaStore
    /// Another store instance on the same data: the same object for the in-memory store, another
    /// `DatabasePool` on the same file, another schema-sharing `PostgresSagaStore`.
    let other: any SagaStore
}

/// Creates a fresh, empty store of that kind, runs it (and a second instance on the same data)
/// while `body` runs, and cleans up. Returns without running `body` when PostgreSQL is not
/// available locally (never in CI).
func withStore(
    _ kind: StoreKind, _ body: (StoreUnderTest) async throws -> Void
) async throws {
    switch kind {
    case .memory:
        let store = InMemorySagaStore()
        try await body(StoreUnderTest(store: store, other: store))
    case .sqlite:
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { store in
            try await SQLiteSagaStore(path: path).withRunning { other in
                try await body(StoreUnderTest(store: store, other: other))
            }
        }
    case .postgres:
        try await withPostgresStore { fixture, _ in try await body(fixture) }
    }
}

/// A fresh directory under the system's temporary directory.
func temporaryDirectory() -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-store-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A unique id for one test's sagas.
func uniqueID(_ prefix: String = "saga") -> String {
    "\(prefix)-\(UUID().uuidString.lowercased())"
}

/// A date with whole milliseconds, as every store keeps them.
func milliseconds(_ date: Date = Date()) -> Date {
    Date(timeIntervalSince1970: Double(Int64((date.timeIntervalSince1970 * 1000).rounded())) / 1000)
}

/// A saga in its first step.
func makeState(
    id: SagaID = uniqueID(),
    name: String = "order",
    status: SagaStatus = .running,
    updatedAt: Date = milliseconds(),
    payload: JSONObject = ["orderId": "42"]
) -> SagaState {
    SagaState(
        id: id, name: name, status: status, currentStep: 0, attempt: 1, payload: payload,
        context: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], history: [],
        createdAt: updatedAt, updatedAt: updatedAt, version: 0
    )
}

/// An outbox message of a saga.
func makeMessage(sagaID: SagaID, createdAt: Date = milliseconds(), body: String = "{}") -> OutboxMessage {
    OutboxMessage(
        id: uniqueID("msg"), sagaID: sagaID, exchange: "sagas", routingKey: "order.reserve", body: Array(body.utf8),
        headers: ["content-type": "application/json"], createdAt: createdAt
    )
}

/// Asserts that `body` throws a ``SagaError`` with that code, and returns it.
@discardableResult
func expectSagaError(
    _ code: SagaError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async -> SagaError? {
    do {
        try await body()
        Issue.record("expected SagaError \(code), nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as SagaError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected SagaError \(code), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
