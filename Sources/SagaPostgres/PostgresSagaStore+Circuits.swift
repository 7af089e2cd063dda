import Foundation
import PostgresNIO
public import SagaCore

extension PostgresSagaStore {
    /// The circuit breaker kept under `key` in `saga_circuits` (closed, version 0, when none is).
    public func circuit(_ key: String) async throws -> StoredCircuit {
        let found = try await rows(
            "read a circuit breaker",
            """
            SELECT failures, (extract(epoch FROM opened_at) * 1000)::int8 AS opened_at, version
            FROM \(unescaped: namespace).saga_circuits WHERE key = \(key)
            """
        )
        guard let row = found.first else { return StoredCircuit(state: .closed, version: 0) }
        let openedAt = try row["opened_at"].decode(Int64?.self)
        return StoredCircuit(
            state: CircuitBreakerState(
                failures: Int(try row["failures"].decode(Int32.self)),
                openedAt: openedAt.map { Date(timeIntervalSince1970: Double($0) / 1000) }),
            version: try row["version"].decode(Int64.self))
    }

    /// Saves a circuit breaker's state if its version is still `expectedVersion` (compare and
    /// swap; 0 inserts it). A statement whose connection failed may have been applied: its
    /// retry then finds the new version and reports `false`, and the caller reads again.
    public func saveCircuit(_ key: String, _ state: CircuitBreakerState, expectedVersion: Int64) async throws -> Bool {
        let failures = Int32(clamping: state.failures)
        let openedAt = state.openedAt.map { Double(Int64(($0.timeIntervalSince1970 * 1000).rounded())) / 1000 }
        let saved: [PostgresRandomAccessRow]
        if expectedVersion == 0 {
            saved = try await rows(
                "save a circuit breaker",
                """
                INSERT INTO \(unescaped: namespace).saga_circuits (key, failures, opened_at, version, updated_at)
                VALUES (\(key), \(failures), to_timestamp(\(openedAt)), 1, now())
                ON CONFLICT (key) DO NOTHING
                RETURNING version
                """
            )
        } else {
            saved = try await rows(
                "save a circuit breaker",
                """
                UPDATE \(unescaped: namespace).saga_circuits
                SET failures = \(failures), opened_at = to_timestamp(\(openedAt)), version = version + 1, updated_at = now()
                WHERE key = \(key) AND version = \(expectedVersion)
                RETURNING version
                """
            )
        }
        return saved.count == 1
    }
}
