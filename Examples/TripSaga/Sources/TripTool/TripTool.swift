import SagaOperator
import TripSaga

/// The team's own `saga` tool: every command of SagaKit's `saga` (list, show, graph, retry,
/// compensate, resolve, reap, dlq, services, console…), and it knows the trip definition even
/// before a service has registered it in the store. Reads the same settings as the services
/// (`SAGAKIT_STORE_URL`, `AMQP_URL`, `SAGAKIT_PREFIX`).
@main struct TripTool {
    static func main() async {
        await SagaOperatorTool.main(definitions: [TripSaga.definition])
    }
}
