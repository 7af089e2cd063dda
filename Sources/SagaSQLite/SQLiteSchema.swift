import Foundation
import GRDB
import Logging
import SagaCore

/// The SQLite schema and its migrations.
///
/// Version 2 gives every outbox message its topology (the prefix of its exchange, see
/// ``SagaCore/OutboxMessage/topology``), a count of failed publish attempts and the time it is
/// next due, so that a relay reads only its own topology's messages and a message that keeps
/// failing moves behind the others.
///
/// Version 3 adds `saga_definitions`: the canonical document of every registered saga
/// definition, by name and version (see ``SagaCore/SagaStore/register(_:)``).
///
/// Version 4 adds `saga_circuits`: the state of the steps' circuit breakers (see
/// ``SagaCore/SagaStore/circuit(_:)``), shared by every process of the store.
///
/// Version 5 adds `saga_participants`: the participant processes that run, their services and
/// commands (see ``SagaCore/SagaStore/recordParticipant(_:)``).
///
/// `sagakit_schema` holds one row with the version of the schema in the file. Opening a store
/// runs, in one `IMMEDIATE` transaction, every migration after the recorded version; processes
/// that open the same file at once take turns, and the later ones find nothing to do.
enum SQLiteSchema {
    /// The version this SagaKit writes.
    static let currentVersion = 5

    /// Migration `n` brings the schema from version `n` to `n + 1`.
    static let migrations: [String] = [
        // 0 → 1
        """
        CREATE TABLE sagas (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            current_step INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            payload TEXT NOT NULL,
            context TEXT NOT NULL,
            history TEXT NOT NULL,
            failure_reason TEXT,
            deadline INTEGER,
            reap_attempts INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            version INTEGER NOT NULL,
            lease_owner TEXT,
            lease_until INTEGER
        );
        CREATE INDEX sagas_status_updated ON sagas (status, updated_at);
        CREATE INDEX sagas_name ON sagas (name);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            saga_id TEXT NOT NULL,
            exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            sent_at INTEGER
        );
        CREATE INDEX outbox_pending ON outbox (created_at, seq) WHERE sent_at IS NULL;
        CREATE INDEX outbox_saga ON outbox (saga_id);
        """,
        // 1 → 2 (the topologies of existing messages are filled in by `backfillTopologies`)
        """
        ALTER TABLE outbox ADD COLUMN topology TEXT NOT NULL DEFAULT '';
        ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
        UPDATE outbox SET next_attempt_at = created_at;
        DROP INDEX IF EXISTS outbox_pending;
        CREATE INDEX outbox_due ON outbox (topology, next_attempt_at, seq) WHERE sent_at IS NULL;
        """,
        // 2 → 3
        """
        CREATE TABLE IF NOT EXISTS saga_definitions (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            hash TEXT NOT NULL,
            document TEXT NOT NULL,
            registered_at INTEGER NOT NULL,
            PRIMARY KEY (name, version)
        );
        """,
        // 3 → 4
        """
        CREATE TABLE IF NOT EXISTS saga_circuits (
            key TEXT PRIMARY KEY NOT NULL,
            failures INTEGER NOT NULL,
            opened_at INTEGER,
            version INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        """,
        // 4 → 5
        """
        CREATE TABLE IF NOT EXISTS saga_participants (
            topology TEXT NOT NULL,
            service TEXT NOT NULL,
            instance TEXT NOT NULL,
            commands TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            report_interval_ms INTEGER NOT NULL,
            PRIMARY KEY (topology, service, instance)
        );
        """,
    ]

    /// Sets the topology of the messages recorded before version 2, from their exchange.
    private static func backfillTopologies(_ db: Database) throws {
        let exchanges = try String.fetchAll(db, sql: "SELECT DISTINCT exchange FROM outbox")
        for exchange in exchanges {
            try db.execute(
                sql: "UPDATE outbox SET topology = ? WHERE exchange = ?",
                arguments: [OutboxMessage.topology(ofExchange: exchange), exchange])
        }
    }

    /// Creates or migrates the schema; with `migrates` false, a schema that is missing or older
    /// fails with `schemaTooOld` (the write transaction, with the table it created, is rolled
    /// back).
    static func migrate(_ pool: DatabasePool, path: String, migrates: Bool = true, logger: Logger) async throws {
        let (from, to) = try await pool.write { db -> (Int, Int) in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS sagakit_schema (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        version INTEGER NOT NULL,
                        migrated_at INTEGER NOT NULL
                    )
                    """
            )
            let found = try Int.fetchOne(db, sql: "SELECT version FROM sagakit_schema WHERE id = 1") ?? 0
            guard found <= currentVersion else {
                throw SagaError(
                    .schemaTooNew,
                    "the SQLite store \(path) has schema version \(found); this SagaKit knows up to \(currentVersion)",
                    recoverySuggestion: "upgrade SagaKit in this process, or use another file"
                )
            }
            guard found < currentVersion else { return (found, found) }
            guard migrates else {
                throw SagaError.schemaNotMigrated(
                    found: found, current: currentVersion, store: "the SQLite store \(path)",
                    check: "the file (SAGAKIT_STORE_URL)")
            }
            for version in found..<currentVersion {
                try db.execute(sql: migrations[version])
                if version == 1 { try backfillTopologies(db) }
            }
            try db.execute(
                sql: """
                    INSERT INTO sagakit_schema (id, version, migrated_at) VALUES (1, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET version = excluded.version, migrated_at = excluded.migrated_at
                    """,
                arguments: [currentVersion, StoreCoding.milliseconds(Date())]
            )
            return (found, currentVersion)
        }
        if from != to {
            logger.info(
                "migrated the SQLite saga store",
                metadata: ["store.path": "\(path)", "store.schema.from": "\(from)", "store.schema.to": "\(to)"]
            )
        }
    }
}
