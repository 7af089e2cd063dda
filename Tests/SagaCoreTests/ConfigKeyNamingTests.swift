import Configuration
import SagaCore
import Testing

@Suite("Configuration errors name what to set")
struct ConfigKeyNamingTests {
    /// A service reads its settings through a scoped reader (`sagakit.store`); an error names the
    /// full key and its environment variable, not only the key inside the scope.
    @Test func aMalformedValueIsNamedByItsFullKeyAndEnvironmentVariable() throws {
        let root = ConfigReader(provider: InMemoryProvider(values: ["sagakit.store.statement.timeout.seconds": "soon"]))
        let store = root.scoped(to: "sagakit").scoped(to: "store")
        #expect(store.sagaFullKey("statement.timeout.seconds").components == ["sagakit", "store", "statement", "timeout", "seconds"])
        let error = #expect(throws: SagaError.self) {
            _ = try store.sagaSeconds("statement.timeout.seconds", default: .seconds(30))
        }
        #expect(
            error?.message.contains(
                "'sagakit.store.statement.timeout.seconds' (environment variable SAGAKIT_STORE_STATEMENT_TIMEOUT_SECONDS)") == true,
            "\(String(describing: error))")
        #expect(root.sagaDescribe("url") == "'url' (environment variable URL)")
    }
}
