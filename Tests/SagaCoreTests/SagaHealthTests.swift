import Foundation
import SagaCore
import Testing

@Suite("Health registry")
struct SagaHealthTests {
    @Test func readyWhenEveryComponentIsAndSaysWhyNot() throws {
        let health = SagaHealth()
        #expect(!health.report().isReady, "nothing registered: starting, not ready")
        let broker = health.register("broker connection (publisher)", detail: "not connected yet")
        let participant = health.register("participant 'payment'", detail: "starting")
        #expect(!health.report().isReady)
        broker.ready("connected to 127.0.0.1:5672")
        participant.ready("consuming queue 'sagakit.payment'")
        let ready = health.report()
        #expect(ready.isReady)
        #expect(ready.components.map(\.name) == ["broker connection (publisher)", "participant 'payment'"], "in registration order")

        // `since` moves only when readiness changes, not when the detail does.
        let since = try #require(ready.components.last?.since)
        participant.ready("consuming queue 'sagakit.payment' (again)")
        #expect(health.report().components.last?.since == since)
        broker.notReady("connection to 127.0.0.1:5672 lost, reconnecting: connection reset")
        let lost = health.report()
        #expect(!lost.isReady)
        #expect(lost.components.first?.since ?? .distantPast >= since)

        let json = lost.json()
        #expect(json.hasPrefix(#"{"components":[{"#) && json.contains(#""status":"not ready""#))
        let decoded = try JSONDecoder.iso8601.decode(Body.self, from: Data(json.utf8))
        #expect(decoded.components.map(\.ready) == [false, true])
        #expect(decoded.components.first?.detail == "connection to 127.0.0.1:5672 lost, reconnecting: connection reset")

        broker.remove()
        #expect(health.report().isReady, "a part that stopped no longer counts")
        participant.remove()
        #expect(!health.report().isReady)
    }

    private struct Body: Decodable {
        var status: String
        var components: [SagaHealthReport.Component]
    }
}

extension JSONDecoder {
    fileprivate static var iso8601: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
