import ArgumentParser
import Foundation
import GRDB
import OrderSystemSupport
import Participant

/// The shipping service: the order saga's pivot. Once an order ships there is no going back, so
/// a failure here is retried forward (after a delay) until it succeeds. It fails transiently at a
/// configurable rate to show those retries. Shipments live in `shipping.db`.
@main
struct ShippingService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shipping-service",
        abstract: "Ships orders, the pivot of the order saga (example participant)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "This instance's name (instances of one service compete on one queue).")
    var instance: String?

    @Option(help: "Share of shipping attempts that fail transiently, 0…1 (env SAGAKIT_SHIPPING_FAILURE_RATE).")
    var failureRate: Double?

    func run() async throws {
        let (configuration, instance, logger) = try ParticipantApp.prepare(
            service: "shipping", connection: connection, instance: instance)
        let failureRate = failureRate ?? ProcessInfo.processInfo.environment["SAGAKIT_SHIPPING_FAILURE_RATE"].flatMap(Double.init) ?? 0.05
        guard (0...1).contains(failureRate) else { throw ValidationError("--failure-rate must be between 0 and 1") }

        let shipments = try Shipments(path: configuration.dataPath("shipping.db"))
        var handlers = SagaHandlerRegistry()
        handlers.register(OrderSaga.Command.ship) { context in
            let order = try context.payload(as: ShipmentRequest.self)
            if try await shipments.tracking(sagaID: context.sagaID) == nil,
                OrderSaga.shippingFails(orderID: order.orderId, attempt: context.attempt, rate: failureRate)
            {
                // Thrown errors are retried by the step's policy; the pivot retries until success.
                throw CarrierUnavailable(orderID: order.orderId, attempt: context.attempt)
            }
            let (tracking, isNew) = try await shipments.ship(
                order, sagaID: context.sagaID, key: context.idempotencyKey, attempt: context.attempt)
            if isNew {
                context.logger.info("shipped \(order.quantity) × \(order.sku)", metadata: ["tracking": "\(tracking)"])
            } else {
                // A redelivery after a crash between the shipment and the step's commit.
                context.logger.info("already shipped; completing the step", metadata: ["tracking": "\(tracking)"])
            }
            try await context.completeStep(merging: ["trackingNumber": .string(tracking)])
        }
        try await ParticipantApp.run(
            service: "shipping", instance: instance, configuration: configuration, handlers: handlers, logger: logger
        )
    }
}

struct CarrierUnavailable: Error, CustomStringConvertible {
    var orderID: String
    var attempt: Int
    var description: String { "carrier unavailable for order \(orderID) (attempt \(attempt)); will retry" }
}

/// What the shipping service reads from the saga payload.
struct ShipmentRequest: Decodable {
    var orderId: String
    var sku: String
    var quantity: Int
}

/// The `shipments` table in `shipping.db`: one row per shipped saga.
struct Shipments: Sendable {
    let database: DatabasePool

    init(path: String) throws {
        database = try LocalDatabase.open(path: path) { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS shipments (
                        saga_id TEXT PRIMARY KEY, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
                        tracking TEXT NOT NULL, ship_key TEXT UNIQUE NOT NULL, attempt INTEGER NOT NULL, shipped_at REAL NOT NULL);
                    """)
        }
    }

    func tracking(sagaID: String) async throws -> String? {
        try await database.read { db in
            try String.fetchOne(db, sql: "SELECT tracking FROM shipments WHERE saga_id = ?", arguments: [sagaID])
        }
    }

    /// Records the shipment once per idempotency key; returns its tracking number, and whether
    /// this call recorded it (false: an earlier delivery of the same step did).
    func ship(_ request: ShipmentRequest, sagaID: String, key: String, attempt: Int) async throws -> (tracking: String, isNew: Bool) {
        try await database.write { db in
            if let tracking = try String.fetchOne(db, sql: "SELECT tracking FROM shipments WHERE ship_key = ?", arguments: [key]) {
                return (tracking, false)
            }
            let tracking = "TRK-\(sagaID)"
            try db.execute(
                sql: "INSERT INTO shipments (saga_id, sku, quantity, tracking, ship_key, attempt, shipped_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [sagaID, request.sku, request.quantity, tracking, key, attempt, Date().timeIntervalSince1970])
            return (tracking, true)
        }
    }
}
