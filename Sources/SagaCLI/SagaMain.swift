import SagaOperator

/// `saga`: the operator tool with no compiled-in definitions. Every command works on every saga:
/// definitions are read from the store, where every participant and manager registers the ones it
/// runs. To compile definitions in (for example to graph one no process has registered yet), build
/// your own tool with `SagaOperatorTool.main(definitions:)`.
@main
struct SagaMain {
    static func main() async {
        await SagaOperatorTool.main()
    }
}
