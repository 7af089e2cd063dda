import ArgumentParser
import Foundation
import GRDB
import OrderSystemSupport
import Participant

/// The inventory service: reserves stock for an order and releases it when the order is
/// compensated. Its stock and reservations live in its own SQLite file (`inventory.db` in the
/// data directory), so every reservation and release can be checked afterwards.
@main
struct InventoryService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inventory-service",
        abstract: "Reserves and releases stock for order sagas (example participant)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "This instance's name (instances of one service compete on one queue).")
    var instance: String?

    @Option(help: "Units of each SKU on hand when the database is created.")
    var initialStock = 1_000_000

    func run() async throws {
        let (configuration, instance, logger) = try ParticipantApp.prepare(
            service: "inventory", connection: connection, instance: instance)

        let stock = try Stock(path: configuration.dataPath("inventory.db"), initialStock: initialStock)
        var handlers = SagaHandlerRegistry()
        handlers.register(OrderSaga.Command.reserve) { context in
            let order = try context.payload(as: StockRequest.self)
            switch try await stock.reserve(order, sagaID: context.sagaID, key: context.idempotencyKey) {
            case .reserved(let reservation):
                context.logger.info("reserved \(order.quantity) × \(order.sku)")
                try await context.completeStep(merging: ["reservationId": .string(reservation)])
            case .outOfStock(let available):
                try await context.failAndCompensate(
                    reason: "out of stock: \(order.quantity) × \(order.sku) ordered, \(available) available")
            case .cancelled:
                try await context.failAndCompensate(reason: "the order was cancelled before the stock was reserved")
            }
        }
        handlers.register(OrderSaga.Command.release) { context in
            let released = try await stock.release(sagaID: context.sagaID, key: context.idempotencyKey)
            context.logger.info(released > 0 ? "released \(released) unit(s)" : "nothing to release (recorded a tombstone)")
            try await context.completeCompensation()
        }
        try await ParticipantApp.run(
            service: "inventory", instance: instance, configuration: configuration, handlers: handlers, logger: logger
        )
    }
}

/// What the inventory service reads from the saga payload (its own type; services share none).
struct StockRequest: Decodable {
    var orderId: String
    var sku: String
    var quantity: Int
}

/// The stock table and the reservations, in `inventory.db`.
///
/// `reservations` has one row per saga: `reserved`, `released`, or `cancelled` (a tombstone
/// written by a release that ran before any reservation, so that a late reserve does nothing).
/// Each effect is applied once per idempotency key.
struct Stock: Sendable {
    enum Reservation: Sendable {
        case reserved(String)
        case outOfStock(available: Int)
        case cancelled
    }

    let database: DatabasePool
    let initialStock: Int

    init(path: String, initialStock: Int) throws {
        self.initialStock = initialStock
        database = try LocalDatabase.open(path: path) { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS stock (
                        sku TEXT PRIMARY KEY, initial INTEGER NOT NULL, on_hand INTEGER NOT NULL);
                    CREATE TABLE IF NOT EXISTS reservations (
                        saga_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
                        status TEXT NOT NULL, reserve_key TEXT UNIQUE, release_key TEXT UNIQUE,
                        reserved_at REAL, released_at REAL);
                    """)
        }
    }

    func reserve(_ request: StockRequest, sagaID: String, key: String) async throws -> Reservation {
        let initialStock = initialStock
        return try await database.write { db in
            if let row = try Row.fetchOne(db, sql: "SELECT status FROM reservations WHERE saga_id = ?", arguments: [sagaID]) {
                let status: String = row["status"]
                // Applied already (a redelivery or a retry): report the same outcome.
                return status == "reserved" ? .reserved("r-\(sagaID)") : .cancelled
            }
            try db.execute(
                sql: "INSERT OR IGNORE INTO stock (sku, initial, on_hand) VALUES (?, ?, ?)",
                arguments: [request.sku, initialStock, initialStock])
            let onHand = try Int.fetchOne(db, sql: "SELECT on_hand FROM stock WHERE sku = ?", arguments: [request.sku]) ?? 0
            guard onHand >= request.quantity else { return .outOfStock(available: onHand) }
            try db.execute(sql: "UPDATE stock SET on_hand = on_hand - ? WHERE sku = ?", arguments: [request.quantity, request.sku])
            try db.execute(
                sql:
                    "INSERT INTO reservations (saga_id, sku, quantity, status, reserve_key, reserved_at) VALUES (?, ?, ?, 'reserved', ?, ?)",
                arguments: [sagaID, request.sku, request.quantity, key, Date().timeIntervalSince1970])
            return .reserved("r-\(sagaID)")
        }
    }

    /// Releases the saga's reservation; returns the units put back (0 when there was nothing).
    func release(sagaID: String, key: String) async throws -> Int {
        try await database.write { db in
            guard
                let row = try Row.fetchOne(db, sql: "SELECT sku, quantity, status FROM reservations WHERE saga_id = ?", arguments: [sagaID])
            else {
                try db.execute(
                    sql:
                        "INSERT INTO reservations (saga_id, sku, quantity, status, release_key, released_at) VALUES (?, '', 0, 'cancelled', ?, ?)",
                    arguments: [sagaID, key, Date().timeIntervalSince1970])
                return 0
            }
            let status: String = row["status"]
            guard status == "reserved" else { return 0 }
            let quantity: Int = row["quantity"]
            let sku: String = row["sku"]
            try db.execute(sql: "UPDATE stock SET on_hand = on_hand + ? WHERE sku = ?", arguments: [quantity, sku])
            try db.execute(
                sql: "UPDATE reservations SET status = 'released', release_key = ?, released_at = ? WHERE saga_id = ?",
                arguments: [key, Date().timeIntervalSince1970, sagaID])
            return quantity
        }
    }
}
