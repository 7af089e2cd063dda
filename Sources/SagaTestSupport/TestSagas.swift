public import SagaCore

/// The order saga of the participant tests and fault tests: reserve stock → charge card → ship
/// (the pivot). Retries wait one second so that tests stay fast.
public enum TestSagas {
    /// The definition.
    public static let order: SagaDefinition = {
        do {
            return try SagaBuilder("order")
                .step(
                    "reserve-stock", action: "inventory.reserve", compensation: "inventory.release",
                    options: StepOptions(retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1)))
                )
                .step(
                    "charge-card", action: "payment.charge", compensation: "payment.refund",
                    options: StepOptions(retry: RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1)))
                )
                .step(
                    "ship", action: "shipping.ship",
                    options: StepOptions(
                        isPivot: true, retry: RetryPolicy(maxAttempts: 1, initialDelay: .seconds(1), maxDelay: .seconds(1)))
                )
                .compensationRetry(RetryPolicy(maxAttempts: 2, initialDelay: .seconds(1), maxDelay: .seconds(1)))
                .build()
        } catch {
            fatalError("the test order saga is invalid: \(error)")
        }
    }()

    /// A registry with the order saga.
    public static var registry: SagaDefinitionRegistry {
        do {
            return try SagaDefinitionRegistry([order])
        } catch {
            fatalError("\(error)")
        }
    }

    /// The commands each service of the order saga handles.
    public static let commandsByService: [String: [String]] = [
        "inventory": ["inventory.reserve", "inventory.release"],
        "payment": ["payment.charge", "payment.refund"],
        "shipping": ["shipping.ship"],
    ]
}
