import Foundation
import Logging
import PostgresNIO
import SagaCore

/// The PostgreSQL schema and its migrations.
///
/// `sagakit_schema` holds one row with the version of the schema. Opening a store runs, in one
/// transaction holding an advisory lock on the schema's name, every migration after the
/// recorded version; processes that open the store together take turns.
enum PostgresSchema {
    /// The version this SagaKit writes.
    static let currentVersion = 1

    /// Migration `n` brings the schema from version `n` to `n + 1`; `S` stands for the quoted
    /// schema name.
    static let migrations: [[String]] = [
        // 0 → 1
        [
            """
            CREATE TABLE S.sagas (
                id text PRIMARY KEY,
                name text NOT NULL,
                status text NOT NULL,
                current_step integer NOT NULL,
                attempt integer NOT NULL,
                payload json NOT NULL,
                context json NOT NULL,
                history json NOT NULL,
                failure_reason text,
                deadline timestamptz,
                reap_attempts integer NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                version bigint NOT NULL,
                lease_owner text,
                lease_until timestamptz
            )
            """,
            "CREATE INDEX sagas_status_updated ON S.sagas (status, updated_at)",
            "CREATE INDEX sagas_name ON S.sagas (name)",
            """
            CREATE TABLE S.outbox (
                seq bigserial PRIMARY KEY,
                id text NOT NULL UNIQUE,
                saga_id text NOT NULL,
                exchange text NOT NULL,
                routing_key text NOT NULL,
                body bytea NOT NULL,
                headers json NOT NULL,
                created_at timestamptz NOT NULL,
                sent_at timestamptz
            )
            """,
            "CREATE INDEX outbox_pending ON S.outbox (created_at, seq) WHERE sent_at IS NULL",
            "CREATE INDEX outbox_saga ON S.outbox (saga_id)",
        ]
    ]

    static func migrate(
        _ connection: PostgresConnection, namespace: String, schema: String, location: String, logger: Logger
    ) async throws {
        func run(_ sql: String, _ connection: PostgresConnection) async throws {
            let text = sql.replacingOccurrences(of: "S.", with: "\(namespace).")
            try await connection.query(PostgresQuery(unsafeSQL: text), logger: logger)
        }
        let lockKey = "sagakit.schema.\(schema)"
        let (from, to) = try await connection.withTransaction(logger: logger) { connection -> (Int, Int) in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(lockKey)))", logger: logger)
            try await run("CREATE SCHEMA IF NOT EXISTS \(namespace)", connection)
            try await run(
                """
                CREATE TABLE IF NOT EXISTS S.sagakit_schema (
                    id integer PRIMARY KEY CHECK (id = 1),
                    version integer NOT NULL,
                    migrated_at timestamptz NOT NULL
                )
                """,
                connection
            )
            var found = 0
            let rows = try await connection.query(
                PostgresQuery(unsafeSQL: "SELECT version FROM \(namespace).sagakit_schema WHERE id = 1"), logger: logger
            )
            for try await version in rows.decode(Int.self) { found = version }
            guard found <= currentVersion else {
                throw SagaError(
                    .schemaTooNew,
                    "the PostgreSQL store at \(location) (schema \(schema)) has schema version \(found); this SagaKit knows up to \(currentVersion)",
                    recoverySuggestion: "upgrade SagaKit in this process, or use another schema"
                )
            }
            guard found < currentVersion else { return (found, found) }
            for version in found..<currentVersion {
                for statement in migrations[version] { try await run(statement, connection) }
            }
            try await connection.query(
                """
                INSERT INTO \(unescaped: namespace).sagakit_schema (id, version, migrated_at) VALUES (1, \(currentVersion), now())
                ON CONFLICT (id) DO UPDATE SET version = excluded.version, migrated_at = excluded.migrated_at
                """,
                logger: logger
            )
            return (found, currentVersion)
        }
        if from != to {
            logger.info(
                "migrated the PostgreSQL saga store",
                metadata: ["store.location": "\(location)", "store.schema.from": "\(from)", "store.schema.to": "\(to)"]
            )
        }
    }
}
