import Foundation
import GRDB
import Logging
import Participant
import PostgresNIO
import SagaPostgres

/// The services' own tables (the peer's `inventory`, `account`, `shipping`), prefixed `bench_`
/// so that they never meet SagaKit's tables, plus `bench_processed` (the idempotency keys of the
/// separate-transaction way).
enum LocalTables {
    /// Stock rows.
    static let skus = 100
    /// Account rows.
    static let accounts = 1000
    /// Shipping lanes.
    static let lanes = 64
    /// Initial stock per row.
    static let initialStock: Int64 = 10_000_000
    /// Initial balance per account.
    static let initialBalance: Int64 = 1_000_000_000_000

    /// Creates the tables when missing (both SQL dialects).
    static let create = [
        "CREATE TABLE IF NOT EXISTS bench_inventory (sku BIGINT PRIMARY KEY, available BIGINT NOT NULL, reserved BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bench_account (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, charged BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bench_shipping (lane BIGINT PRIMARY KEY, shipped BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bench_processed (key TEXT PRIMARY KEY)",
    ]

    /// Empties and refills the tables (both SQL dialects).
    static let reset = [
        "DELETE FROM bench_inventory", "DELETE FROM bench_account", "DELETE FROM bench_shipping", "DELETE FROM bench_processed",
        "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < \(skus - 1)) "
            + "INSERT INTO bench_inventory SELECT x, \(initialStock), 0 FROM g",
        "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < \(accounts - 1)) "
            + "INSERT INTO bench_account SELECT x, \(initialBalance), 0 FROM g",
        "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < \(lanes - 1)) "
            + "INSERT INTO bench_shipping SELECT x, 0 FROM g",
    ]

    /// The sums the verification compares.
    static let totalsQuery = """
        SELECT (SELECT CAST(sum(available) AS BIGINT) FROM bench_inventory), (SELECT CAST(sum(reserved) AS BIGINT) FROM bench_inventory),
               (SELECT CAST(sum(balance) AS BIGINT) FROM bench_account), (SELECT CAST(sum(charged) AS BIGINT) FROM bench_account),
               (SELECT CAST(sum(shipped) AS BIGINT) FROM bench_shipping)
        """
}

/// The sums of the services' tables after a run.
struct TableTotals: Sendable {
    var available: Int64
    var reserved: Int64
    var balance: Int64
    var charged: Int64
    var shipped: Int64
}

/// What a step does to its service's table.
enum Effect: Sendable {
    case reserve(sku: Int, qty: Int)
    case release(sku: Int, qty: Int)
    case charge(account: Int, amount: Int)
    case refund(account: Int, amount: Int)
    case ship(lane: Int)

    /// The effect as a write in the saga's own transaction (``LocalWrite``).
    var localWrite: LocalWrite {
        switch self {
        case .reserve(let sku, let qty):
            LocalWrite(
                "UPDATE bench_inventory SET available = available - $1, reserved = reserved + $1 WHERE sku = $2",
                .int(Int64(qty)), .int(Int64(sku)), expecting: .rows(1))
        case .release(let sku, let qty):
            LocalWrite(
                "UPDATE bench_inventory SET available = available + $1, reserved = reserved - $1 WHERE sku = $2",
                .int(Int64(qty)), .int(Int64(sku)), expecting: .rows(1))
        case .charge(let account, let amount):
            LocalWrite(
                "UPDATE bench_account SET balance = balance - $1, charged = charged + $1 WHERE id = $2",
                .int(Int64(amount)), .int(Int64(account)), expecting: .rows(1))
        case .refund(let account, let amount):
            LocalWrite(
                "UPDATE bench_account SET balance = balance + $1, charged = charged - $1 WHERE id = $2",
                .int(Int64(amount)), .int(Int64(account)), expecting: .rows(1))
        case .ship(let lane):
            LocalWrite("UPDATE bench_shipping SET shipped = shipped + 1 WHERE lane = $1", .int(Int64(lane)), expecting: .rows(1))
        }
    }

    /// Applies the effect in its own PostgreSQL transaction, once per idempotency key (the
    /// separate-database way: a second commit besides the saga's).
    func apply(on client: PostgresClient, key: String, logger: Logger) async throws {
        try await client.withTransaction(logger: logger) { connection in
            let fresh = try await connection.query(
                "INSERT INTO bench_processed (key) VALUES (\(key)) ON CONFLICT DO NOTHING RETURNING 1", logger: logger)
            var inserted = false
            for try await _ in fresh { inserted = true }
            guard inserted else { return }
            switch self {
            case .reserve(let sku, let qty):
                try await connection.query(
                    "UPDATE bench_inventory SET available = available - \(qty), reserved = reserved + \(qty) WHERE sku = \(sku)",
                    logger: logger)
            case .release(let sku, let qty):
                try await connection.query(
                    "UPDATE bench_inventory SET available = available + \(qty), reserved = reserved - \(qty) WHERE sku = \(sku)",
                    logger: logger)
            case .charge(let account, let amount):
                try await connection.query(
                    "UPDATE bench_account SET balance = balance - \(amount), charged = charged + \(amount) WHERE id = \(account)",
                    logger: logger)
            case .refund(let account, let amount):
                try await connection.query(
                    "UPDATE bench_account SET balance = balance + \(amount), charged = charged - \(amount) WHERE id = \(account)",
                    logger: logger)
            case .ship(let lane):
                try await connection.query("UPDATE bench_shipping SET shipped = shipped + 1 WHERE lane = \(lane)", logger: logger)
            }
        }
    }
}

/// Runs statements on the database holding the services' tables.
enum TableAccess: Sendable {
    case postgres(PostgresClient)
    case sqlite(DatabasePool)

    /// A PostgreSQL client for `url` (run it with ``withRunning(_:)``).
    static func postgres(url: String) throws -> TableAccess {
        let parsed = try PostgresSagaStore.Configuration(url: url)
        let configuration = PostgresClient.Configuration(
            host: parsed.host, port: parsed.port, username: parsed.username, password: parsed.password, database: parsed.database,
            tls: .disable)
        return .postgres(PostgresClient(configuration: configuration))
    }

    /// Opens a SQLite file that other processes write too (WAL, writers wait for each other).
    static func sqlite(path: String) throws -> TableAccess {
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        let deadline = Date().addingTimeInterval(10)
        while true {
            do {
                return .sqlite(try DatabasePool(path: path, configuration: configuration))
            } catch let error as DatabaseError
                where (error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED) && Date() < deadline
            {
                usleep(20_000)
            }
        }
    }

    /// Runs `body` while the PostgreSQL client's pool runs.
    func withRunning<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        guard case .postgres(let client) = self else { return try await body() }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    /// Runs statements one after the other, in one transaction.
    func execute(_ statements: [String]) async throws {
        switch self {
        case .postgres(let client):
            let logger = Logger(label: "system-benchmark")
            try await client.withTransaction(logger: logger) { connection in
                for statement in statements { try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
            }
        case .sqlite(let pool):
            try await pool.write { db in
                for statement in statements { try db.execute(sql: statement) }
            }
        }
    }

    /// The sums of the tables.
    func totals() async throws -> TableTotals {
        switch self {
        case .postgres(let client):
            let rows = try await client.query(PostgresQuery(unsafeSQL: LocalTables.totalsQuery))
            for try await (a, r, b, c, s) in rows.decode((Int64, Int64, Int64, Int64, Int64).self) {
                return TableTotals(available: a, reserved: r, balance: b, charged: c, shipped: s)
            }
            throw BenchmarkError("no totals")
        case .sqlite(let pool):
            return try await pool.read { db in
                guard let row = try Row.fetchOne(db, sql: LocalTables.totalsQuery) else { throw BenchmarkError("no totals") }
                return TableTotals(available: row[0], reserved: row[1], balance: row[2], charged: row[3], shipped: row[4])
            }
        }
    }
}

/// A benchmark failure with its message.
struct BenchmarkError: Error, CustomStringConvertible {
    /// What went wrong.
    var description: String
    init(_ description: String) { self.description = description }
}
