import Participant

/// The benchmark's saga: the shape of the yardstick's peer. Reserve stock → charge the account →
/// ship; a declined shipment (step 3) compensates the charge, then the reservation.
enum BenchSaga {
    /// The definition's name.
    static let name = "bench-order"

    /// The definition: no pivot, so a failure at step 3 compensates steps 2 and 1. With
    /// `stepTimeout`, each action has that timeout.
    static func definition(stepTimeout: Duration? = nil) -> SagaDefinition {
        do {
            let retry = StepOptions(
                retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(1), maxDelay: .seconds(5)), timeout: stepTimeout)
            return try SagaBuilder(name)
                .step("reserve-stock", action: "inventory.reserve", compensation: "inventory.release", options: retry)
                .step("charge-account", action: "payment.charge", compensation: "payment.refund", options: retry)
                .step("ship", action: "shipping.ship", options: retry)
                .compensationRetry(RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), maxDelay: .seconds(10)))
                .build()
        } catch {
            fatalError("the benchmark saga is invalid: \(error)")
        }
    }

    /// The registry with the definition.
    static func definitions(stepTimeout: Duration? = nil) -> SagaDefinitionRegistry {
        do { return try SagaDefinitionRegistry([definition(stepTimeout: stepTimeout)]) } catch { fatalError("\(error)") }
    }

    /// The commands each service handles.
    static let commands: [String: [String]] = [
        "inventory": ["inventory.reserve", "inventory.release"],
        "payment": ["payment.charge", "payment.refund"],
        "shipping": ["shipping.ship"],
    ]
}

/// A saga's payload: what the peer keeps in its saga row.
struct BenchOrder: Codable, Sendable {
    /// The stock row (0 ..< 100).
    var sku: Int
    /// The quantity (1 ... 5).
    var qty: Int
    /// The account row (0 ..< 1000).
    var account: Int
    /// The amount charged (100 ..< 1100).
    var amount: Int
    /// The shipping lane row (0 ..< 64).
    var lane: Int
    /// Whether shipping declines the order (step 3 fails, the saga compensates).
    var fail: Bool

    /// The order of saga number `index`, with the peer's formulas.
    init(index: Int, fail: Bool) {
        sku = index % LocalTables.skus
        qty = 1 + index % 5
        account = index % LocalTables.accounts
        amount = 100 + index % 1000
        lane = index % LocalTables.lanes
        self.fail = fail
    }
}

/// SplitMix64: the failures, deterministic per repetition (seed 12345 + run, as the peer's
/// driver; the peer draws from Python's Mersenne Twister, so the same rate, not the same sagas).
struct SplitMix64 {
    private var state: UInt64

    /// Seeds the generator.
    init(seed: UInt64) { state = seed }

    /// The next number in [0, 1).
    mutating func next() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(UInt64(1) << 53)
    }
}
