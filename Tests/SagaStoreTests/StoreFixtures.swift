import Foundation
import SagaCore
import SagaSQLite
import SagaTesting
import Testing

/// The stores every conformance test runs against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// A store under test, with a second handle on the same data: the same object for the in-memory
/// store, another `DatabasePool` on the same file, another schema-sharing `PostgresSagaStore`.
typealias StoreUnderTest = SagaStoreConformance.StoreUnderTest

/// The conformance suite's builders (`Conformance.makeState()`, `Conformance.uniqueID()`, …).
typealias Conformance = SagaStoreConformance

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
