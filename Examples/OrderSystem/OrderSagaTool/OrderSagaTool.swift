import OrderSystemSupport
import SagaOperator

/// `order-saga`: the `saga` operator tool built with the example's definitions, the way a team
/// builds its own (see Docs/Operations.md).
@main
struct OrderSagaTool {
    static func main() async {
        await SagaOperatorTool.main(definitions: [OrderSaga.definition])
    }
}
