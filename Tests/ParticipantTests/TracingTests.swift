import InMemoryTracing
import Participant
import Testing
import Tracing

/// The tracer of this test process, bootstrapped once (the instrumentation system is global).
/// Other suites running meanwhile record spans too; tests pick theirs by saga id.
enum TestTracer {
    static let shared: InMemoryTracer = {
        let tracer = InMemoryTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()
}

@Suite("Distributed tracing", .timeLimit(.minutes(1)))
struct TracingTests {
    @Test func aSagaIsOneTraceWhoseStepsAreChildrenOfTheSpansThatSentThem() async throws {
        let tracer = TestTracer.shared
        let ledger = Ledger()
        let final = try await withParticipants(orderHandlers(ledger: ledger), bus: InMemoryBus(), store: InMemorySagaStore()) {
            manager in
            let id = try await manager.start("order", payload: ["orderId": "o-t", "amount": 30, "declinePayment": true])
            return try await manager.outcome(of: id, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)

        let spans = tracer.finishedSpans.filter { $0.attributes["saga.id"]?.toSpanAttribute() == .string(final.id) }
        // The earliest span of each name: delivery is at least once, and a copy of a command (an
        // outbox relay's, when the sent mark came after the relay's grace period on a loaded
        // machine) makes a second, later consumer span with the same parent.
        let byName = Dictionary(
            spans.map { ($0.operationName, $0) },
            uniquingKeysWith: { one, other in
                one.startInstant.nanosecondsSinceEpoch <= other.startInstant.nanosecondsSinceEpoch ? one : other
            })
        #expect(
            Set(byName.keys) == ["saga.start order", "inventory.reserve", "payment.charge", "inventory.release"],
            "\(spans.map(\.operationName))")
        let start = try #require(byName["saga.start order"])
        let reserve = try #require(byName["inventory.reserve"])
        let charge = try #require(byName["payment.charge"])
        let release = try #require(byName["inventory.release"])

        #expect(Set(spans.map(\.traceID)) == [start.traceID], "one trace for the whole saga")
        #expect(start.kind == .producer)
        #expect([reserve, charge, release].allSatisfy { $0.kind == .consumer })
        #expect(reserve.parentSpanID == start.spanID)
        #expect(charge.parentSpanID == reserve.spanID)
        #expect(release.parentSpanID == charge.spanID, "the first compensation is sent by the failed step")
        #expect(charge.attributes["saga.step"]?.toSpanAttribute() == .string("charge-card"))
        #expect(release.attributes["saga.phase"]?.toSpanAttribute() == .string("compensation"))
    }
}
