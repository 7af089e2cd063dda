import SagaCore
import Testing

/// The topology an outbox message belongs to, read from its exchange name (no store involved).
@Suite struct OutboxTopologyTests {
    @Test func topologiesAreReadFromExchangeNames() {
        #expect(OutboxMessage.topology(ofExchange: "shop.commands") == "shop")
        #expect(OutboxMessage.topology(ofExchange: "shop.dead-letter") == "shop")
        #expect(OutboxMessage.topology(ofExchange: "shop.events") == "shop")
        #expect(OutboxMessage.topology(ofExchange: "shop.delay.30s") == "shop")
        #expect(OutboxMessage.topology(ofExchange: "shop.eu.delay.5s") == "shop.eu")
        #expect(OutboxMessage.topology(ofExchange: "shop.eu.commands") == "shop.eu")
        #expect(OutboxMessage.topology(ofExchange: "a1.delay.12s") == "a1")
        #expect(OutboxMessage.topology(ofExchange: "shop.delay.s") == "shop.delay.s")
        #expect(OutboxMessage.topology(ofExchange: "shop.delay.5") == "shop.delay.5")
        #expect(OutboxMessage.topology(ofExchange: ".commands") == ".commands")
        #expect(OutboxMessage.topology(ofExchange: "sagas") == "sagas")
    }
}
