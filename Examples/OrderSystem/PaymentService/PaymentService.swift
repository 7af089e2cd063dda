import ArgumentParser
import Foundation
import GRDB
import OrderSystemSupport
import Participant

/// The payment service: charges the card of an order and refunds it when the order is
/// compensated. It declines a configurable share of orders, chosen by a hash of the order id, so
/// that the demo knows exactly which sagas must end compensated. Charges live in its own SQLite
/// file (`payment.db` in the data directory).
@main
struct PaymentService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "payment-service",
        abstract: "Charges and refunds order sagas (example participant)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "This instance's name (instances of one service compete on one queue).")
    var instance: String?

    @Option(help: "Share of orders declined, 0…1 (deterministic by order id; env SAGAKIT_DECLINE_RATE).")
    var declineRate: Double?

    func run() async throws {
        let (configuration, instance, logger) = try ParticipantApp.prepare(
            service: "payment", connection: connection, instance: instance)
        let declineRate = declineRate ?? ProcessInfo.processInfo.environment["SAGAKIT_DECLINE_RATE"].flatMap(Double.init) ?? 0.1
        guard (0...1).contains(declineRate) else { throw ValidationError("--decline-rate must be between 0 and 1") }
        logger.info("declining \(Int(declineRate * 100))% of orders")

        let ledger = try Ledger(path: configuration.dataPath("payment.db"))
        var handlers = SagaHandlerRegistry()
        handlers.register(OrderSaga.Command.charge) { context in
            let order = try context.payload(as: ChargeRequest.self)
            let declined = OrderSaga.isDeclined(orderID: order.orderId, rate: declineRate)
            switch try await ledger.charge(order, sagaID: context.sagaID, key: context.idempotencyKey, decline: declined) {
            case .charged(let chargeID):
                context.logger.info("charged \(order.amount)")
                try await context.completeStep(merging: ["chargeId": .string(chargeID)])
            case .declined:
                context.logger.notice("card declined")
                try await context.failAndCompensate(reason: "card declined")
            case .cancelled:
                try await context.failAndCompensate(reason: "the order was cancelled before it was charged")
            }
        }
        handlers.register(OrderSaga.Command.refund) { context in
            let refunded = try await ledger.refund(sagaID: context.sagaID, key: context.idempotencyKey)
            context.logger.info(refunded ? "refunded" : "nothing to refund (recorded a tombstone)")
            try await context.completeCompensation()
        }
        try await ParticipantApp.run(
            service: "payment", instance: instance, configuration: configuration, handlers: handlers, logger: logger
        )
    }
}

/// What the payment service reads from the saga payload.
struct ChargeRequest: Decodable {
    var orderId: String
    var amount: Double
}

/// The `charges` table in `payment.db`: one row per saga, `charged`, `refunded`, `declined`, or
/// `voided` (a tombstone written by a refund that ran before any charge).
struct Ledger: Sendable {
    enum Outcome: Sendable {
        case charged(String)
        case declined
        case cancelled
    }

    let database: DatabasePool

    init(path: String) throws {
        database = try LocalDatabase.open(path: path) { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS charges (
                        saga_id TEXT PRIMARY KEY, amount REAL NOT NULL, status TEXT NOT NULL,
                        charge_key TEXT UNIQUE, refund_key TEXT UNIQUE, charged_at REAL, refunded_at REAL);
                    """)
        }
    }

    func charge(_ request: ChargeRequest, sagaID: String, key: String, decline: Bool) async throws -> Outcome {
        try await database.write { db in
            if let status = try String.fetchOne(db, sql: "SELECT status FROM charges WHERE saga_id = ?", arguments: [sagaID]) {
                switch status {
                case "charged", "refunded": return .charged("c-\(sagaID)")
                case "declined": return .declined
                default: return .cancelled
                }
            }
            try db.execute(
                sql: "INSERT INTO charges (saga_id, amount, status, charge_key, charged_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [sagaID, request.amount, decline ? "declined" : "charged", key, Date().timeIntervalSince1970])
            return decline ? .declined : .charged("c-\(sagaID)")
        }
    }

    /// Refunds the saga's charge; returns whether there was one to refund.
    func refund(sagaID: String, key: String) async throws -> Bool {
        try await database.write { db in
            guard let status = try String.fetchOne(db, sql: "SELECT status FROM charges WHERE saga_id = ?", arguments: [sagaID]) else {
                try db.execute(
                    sql: "INSERT INTO charges (saga_id, amount, status, refund_key, refunded_at) VALUES (?, 0, 'voided', ?, ?)",
                    arguments: [sagaID, key, Date().timeIntervalSince1970])
                return false
            }
            guard status == "charged" else { return false }
            try db.execute(
                sql: "UPDATE charges SET status = 'refunded', refund_key = ?, refunded_at = ? WHERE saga_id = ?",
                arguments: [key, Date().timeIntervalSince1970, sagaID])
            return true
        }
    }
}
