import Foundation
import Participant
import SagaSQLite
import Testing

@Suite("saga graph of fallbacks")
struct OperatorFallbackTests {
    @Test func aFallbackIsANodeOfItsOwnWithItsCircuitAndItsEdges() async throws {
        let definition = try SagaBuilder("fallback-graph")
            .step("reserve", action: "inventory.reserve", compensation: "inventory.release")
            .step(
                "charge", action: "payment.charge", compensation: "payment.refund",
                fallback: SagaFallback(action: "backup.charge", breaker: CircuitBreakerPolicy(failureThreshold: 5, openFor: .seconds(30)))
            )
            .step("ship", action: "shipping.ship", options: .pivot)
            .build()
        // The `saga` tool reads the definition from the store, as an operator's would.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-graph-\(UUID().uuidString).db").path
        let store = try SQLiteSagaStore(url: "sqlite://" + path, logger: quietTestLogger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await store.run() }
            try await store.register(definition)
            group.cancelAll()
        }
        let cli = SagaCLI(store: "sqlite://" + path, amqp: "amqp://127.0.0.1:1", prefix: "graph")
        let lines = try await cli.succeed(["graph", "fallback-graph"]).split(separator: "\n").map(String.init)
        #expect(
            lines.contains(#"    f1["fallback of charge<br/>backup.charge<br/>circuit opens after 5 failure(s) for 30 s"]"#), "\(lines)")
        #expect(lines.contains("    a1 -.->|fails for good, or circuit open| f1"))
        #expect(lines.contains("    a1 -.->|refused| c0"))
        #expect(lines.contains("    f1 -->|ok| a2"))
        #expect(lines.contains("    f1 -.->|fails| c0"))
        #expect(lines.contains("    class f1 fallback"))
        #expect(!lines.contains("    a1 -.->|fails| c0"))
        let json = try await cli.json(["graph", "fallback-graph"]) as? [String: Any]
        let steps = try #require(json?["steps"] as? [[String: Any]])
        let fallback = try #require(steps[1]["fallback"] as? [String: Any])
        #expect(fallback["action"] as? String == "backup.charge" && fallback["failureThreshold"] as? Int == 5)
        #expect(fallback["openForSeconds"] as? Double == 30)
    }
}
