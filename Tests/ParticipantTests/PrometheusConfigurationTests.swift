import Configuration
import SagaCore
import Testing

@testable import SagaPrometheus

/// `SagaPrometheus.bootstrap(reader:)` finds `sagakit.metrics.port` whether it is given the
/// process's reader or one scoped as a store's is; a reader scoped elsewhere is an error, not an
/// endpoint that silently never starts.
@Suite("Prometheus endpoint configuration")
struct PrometheusConfigurationTests {
    let root = ConfigReader(provider: InMemoryProvider(values: ["sagakit.metrics.port": "9471", "sagakit.metrics.host": "0.0.0.0"]))

    @Test(arguments: ["", "sagakit", "sagakit.metrics"])
    func thePortIsFoundFromTheProcessReaderOrAScopedOne(scope: String) throws {
        let reader = scope.isEmpty ? root : root.scoped(to: ConfigKey(scope.split(separator: ".").map(String.init)))
        let keys = try SagaPrometheus.keys(in: reader)
        #expect(reader.string(forKey: keys.port) == "9471")
        #expect(reader.string(forKey: keys.host) == "0.0.0.0")
    }

    @Test func aReaderScopedElsewhereIsAnError() throws {
        let error = #expect(throws: SagaError.self) { try SagaPrometheus.keys(in: root.scoped(to: "sagakit.store")) }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains("a reader scoped to 'sagakit.store' cannot see") == true, "\(String(describing: error))")
    }
}
