public import Participant

/// The example order saga shared by the example services, the demo and the `saga` CLI: reserve
/// the stock and charge the card at once (the parallel group `prepare`), hold a large order
/// until the fraud desk approves it (the wait step `fraud-review`), then ship (the pivot, retried
/// forward until it succeeds).
///
/// ```mermaid
/// flowchart LR
///     subgraph prepare [parallel group 'prepare']
///         reserve[inventory.reserve]
///         charge[payment.charge]
///     end
///     prepare --> review{{"fraud-review: wait for fraud.approved<br/>when amount > 1000"}} --> ship[shipping.ship — pivot]
///     charge -. declined .-> undo[inventory.release]
///     review -. rejected or timed out .-> undo2[payment.refund, then inventory.release]
/// ```
///
/// Why this order: stock and payment do not depend on each other, so they run at once (the
/// slower of the two sets the pace, not their sum). The review comes after them, so that the
/// fraud desk only sees orders that can be fulfilled and paid (no one reviews an order whose
/// card is declined), the stock stays held while a person looks, and the payment outcome is
/// there to look at. It comes before the pivot, so nothing ships unreviewed and a rejection (or
/// no answer within ``fraudReviewTimeout``) can still be undone: the charge is refunded and the
/// stock released.
public enum OrderSaga {
    /// The definition's name.
    public static let name = "order"

    /// Step and command names.
    public enum Command {
        /// Reserve the ordered quantity.
        public static let reserve = "inventory.reserve"
        /// Put the reserved quantity back.
        public static let release = "inventory.release"
        /// Charge the card.
        public static let charge = "payment.charge"
        /// Refund the charge.
        public static let refund = "payment.refund"
        /// Ship the order (the pivot).
        public static let ship = "shipping.ship"
    }

    /// Signals the saga waits for (delivered with `SagaManager.signal(_:name:payload:by:)` or
    /// `saga signal`).
    public enum Signal {
        /// The fraud desk approves a large order: its `fraud-review` wait completes and it ships.
        public static let fraudApproved = "fraud.approved"
    }

    /// The name of the parallel group that reserves the stock and charges the card.
    public static let prepareGroup = "prepare"

    /// The name of the wait step of large orders.
    public static let fraudReviewStep = "fraud-review"

    /// The name the order service's fraud desk signs its decisions with (in the sagas' history).
    public static let fraudDesk = "fraud-desk"

    /// Orders whose `amount` is above this wait for a fraud review.
    public static let fraudReviewThreshold = 1000.0

    /// How long a large order waits for ``Signal/fraudApproved`` before it is compensated. Short,
    /// so that a demo run shows a timeout within minutes; a shop would give its fraud team hours
    /// (and a new definition version).
    public static let fraudReviewTimeout = Duration.seconds(300)

    /// ``fraudReviewTimeout`` for people: `5 min`.
    public static var fraudReviewTimeoutText: String {
        let seconds = fraudReviewTimeout.components.seconds
        return seconds % 60 == 0 ? "\(seconds / 60) min" : "\(seconds) s"
    }

    /// The definition (version 2: version 1 ran reserve → charge → ship one after the other).
    public static let definition: SagaDefinition = {
        let retry = StepOptions(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), maxDelay: .seconds(5)))
        do {
            return try SagaBuilder(name)
                .version(2)
                .parallel(prepareGroup) { group in
                    group
                        .step("reserve-stock", action: Command.reserve, compensation: Command.release, options: retry)
                        .step("charge-card", action: Command.charge, compensation: Command.refund, options: retry)
                }
                .wait(
                    fraudReviewStep, for: Signal.fraudApproved, timeout: fraudReviewTimeout, onTimeout: .compensate,
                    when: .greaterThan("amount", JSONNumber(fraudReviewThreshold))
                )
                .step(
                    "ship", action: Command.ship,
                    options: StepOptions(
                        isPivot: true, retry: RetryPolicy(maxAttempts: 1, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(5)))
                )
                .compensationRetry(RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(60)))
                .build()
        } catch {
            fatalError("the order saga definition is invalid: \(error)")
        }
    }()

    /// Every definition the example processes know.
    public static let definitions: SagaDefinitionRegistry = {
        do {
            return try SagaDefinitionRegistry([definition])
        } catch {
            fatalError("\(error)")
        }
    }()

    /// Whether the payment service declines an order: deterministic by the order id, so that the
    /// demo can check that exactly these orders were compensated.
    public static func isDeclined(orderID: String, rate: Double) -> Bool {
        fraction(orderID) < rate
    }

    /// Whether an order is large (its amount above ``fraudReviewThreshold``), deterministic by the
    /// order id: `rate` of the orders the order service places are.
    public static func isLarge(orderID: String, rate: Double) -> Bool {
        fraction("\(orderID)#large") < rate
    }

    /// Whether the demo's fraud desk rejects a large order instead of approving it (deterministic
    /// by the order id, so that the demo can check that exactly these orders were compensated).
    public static func fraudDeskRejects(orderID: String, rate: Double) -> Bool {
        fraction("\(orderID)#fraud") < rate
    }

    /// Whether the shipping service fails an attempt transiently (deterministic by order id and
    /// attempt; a later attempt usually succeeds).
    public static func shippingFails(orderID: String, attempt: Int, rate: Double) -> Bool {
        fraction("\(orderID)#ship#\(attempt)") < rate
    }

    /// A stable, evenly spread number in [0, 1) for a string (FNV-1a 64 with a MurmurHash3
    /// finalizer: the same in every process, unlike `Hasher`).
    public static func fraction(_ text: String) -> Double {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        // FNV alone barely moves the high bits for strings that differ in their last characters
        // (order-00041, order-00042); the MurmurHash3 finalizer spreads every bit.
        hash ^= hash >> 33
        hash = hash &* 0xff51_afd7_ed55_8ccd
        hash ^= hash >> 33
        hash = hash &* 0xc4ce_b9fe_1a85_ec53
        hash ^= hash >> 33
        return Double(hash >> 11) / Double(UInt64(1) << 53)
    }
}
