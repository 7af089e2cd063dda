import SagaOperator

/// `saga`: the operator tool with no compiled-in definitions. `list`, `show` and `dlq` work on
/// every saga; for `graph`, `retry`, `compensate` and `reap` build your own tool with your
/// definitions (`SagaOperatorTool.main(definitions:)`).
@main
struct SagaMain {
    static func main() async {
        await SagaOperatorTool.main()
    }
}
