public import Participant

/// The example order saga shared by the example services, the demo and the `saga` CLI:
/// reserve stock → charge the card → ship (the pivot, retried forward until it succeeds).
///
/// ```mermaid
/// flowchart LR
///     reserve[inventory.reserve] --> charge[payment.charge] --> ship[shipping.ship — pivot]
///     charge -. declined .-> release[inventory.release]
/// ```
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

    /// The definition.
    public static let definition: SagaDefinition = {
        do {
            return try SagaBuilder(name)
                .step(
                    "reserve-stock", action: Command.reserve, compensation: Command.release,
                    options: StepOptions(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), maxDelay: .seconds(5)))
                )
                .step(
                    "charge-card", action: Command.charge, compensation: Command.refund,
                    options: StepOptions(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), maxDelay: .seconds(5)))
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
