import Foundation
import GRDB
public import SagaCore

extension SQLiteSagaStore {
    /// The circuit breaker kept under `key` in `saga_circuits` (closed, version 0, when none is).
    public func circuit(_ key: String) async throws -> StoredCircuit {
        try await read("read a circuit breaker from") { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT failures, opened_at, version FROM saga_circuits WHERE key = ?", arguments: [key])
            else { return StoredCircuit(state: .closed, version: 0) }
            let openedAt: Int64? = row["opened_at"]
            return StoredCircuit(
                state: CircuitBreakerState(failures: row["failures"], openedAt: openedAt.map { StoreCoding.date(milliseconds: $0) }),
                version: row["version"])
        }
    }

    /// Saves a circuit breaker's state if its version is still `expectedVersion` (compare and
    /// swap; 0 inserts it).
    public func saveCircuit(_ key: String, _ state: CircuitBreakerState, expectedVersion: Int64) async throws -> Bool {
        let openedAt = state.openedAt.map { StoreCoding.milliseconds($0) }
        let now = StoreCoding.milliseconds(Date())
        return try await write("save a circuit breaker in") { db in
            if expectedVersion == 0 {
                try db.execute(
                    sql: """
                        INSERT INTO saga_circuits (key, failures, opened_at, version, updated_at) VALUES (?, ?, ?, 1, ?)
                        ON CONFLICT (key) DO NOTHING
                        """,
                    arguments: [key, state.failures, openedAt, now])
            } else {
                try db.execute(
                    sql:
                        "UPDATE saga_circuits SET failures = ?, opened_at = ?, version = version + 1, updated_at = ? WHERE key = ? AND version = ?",
                    arguments: [state.failures, openedAt, now, key, expectedVersion])
            }
            return db.changesCount == 1
        }
    }
}
