import Foundation
import Participant
import Testing

/// The outbox as relays read it: by topology, and failing messages out of the way.
extension SagaStoreConformance {
    /// Each topology's relay sees only its own messages when several topologies (prefixes) share
    /// a store, including prefixes that contain dots or are prefixes of each other; the grace
    /// period (`createdBefore`) and the limit apply within the topology.
    public static let twoTopologiesSharingAStoreSeeOnlyTheirOwnMessages = Check("twoTopologiesSharingAStoreSeeOnlyTheirOwnMessages") {
        fixture in
        let base = milliseconds(Date().addingTimeInterval(-10))
        let state = makeState()
        let exchanges = [
            "alpha.commands", "beta.commands", "alpha.delay.5s", "alpha.beta.commands", "beta.delay.5s",
            "alpha.dead-letter", "alpha.beta.delay.1s",
        ]
        let messages = exchanges.enumerated().map { index, exchange in
            var message = makeMessage(sagaID: state.id, createdAt: milliseconds(base.addingTimeInterval(Double(index) / 10)))
            message.exchange = exchange
            return message
        }
        _ = try await fixture.store.create(state, outbox: messages)
        func pending(_ topology: String) async throws -> [String] {
            try await fixture.other.pendingOutbox(topology: topology, createdBefore: .distantFuture, now: Date(), limit: 100)
                .map(\.exchange)
        }
        #expect(try await pending("alpha") == ["alpha.commands", "alpha.delay.5s", "alpha.dead-letter"])
        #expect(try await pending("beta") == ["beta.commands", "beta.delay.5s"])
        #expect(try await pending("alpha.beta") == ["alpha.beta.commands", "alpha.beta.delay.1s"])
        #expect(try await pending("gamma").isEmpty)
        #expect(try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 100) == messages)

        // The grace period and the limit apply within the topology.
        #expect(
            try await fixture.store.pendingOutbox(
                topology: "alpha", createdBefore: base.addingTimeInterval(0.25), now: Date(), limit: 100
            ).map(\.exchange) == ["alpha.commands", "alpha.delay.5s"])
        #expect(
            try await fixture.store.pendingOutbox(topology: "beta", createdBefore: .distantFuture, now: Date(), limit: 1)
                .map(\.exchange) == ["beta.commands"])
    }

    /// A message's ``OutboxMessage/transientBody`` goes with the publish after the commit only:
    /// the store keeps the message without it, whether it was recorded by `create` or by
    /// `commit`, and its body and headers as they were.
    public static let transientBodyIsNotStored = Check("transientBodyIsNotStored") { fixture in
        let state = makeState()
        var created = makeMessage(sagaID: state.id, createdAt: milliseconds(Date().addingTimeInterval(-2)))
        created.transientBody = Array("{\"state\":{\"id\":\"\(state.id)\"},\"stateSeal\":\"00\"}".utf8)
        let stored = try await fixture.store.create(state, outbox: [created]).state
        var committed = makeMessage(sagaID: state.id, createdAt: milliseconds(Date().addingTimeInterval(-1)))
        committed.transientBody = Array("{}".utf8)
        var next = stored
        next.currentStep += 1
        _ = try await fixture.store.commit(SagaTransition(state: next, expectedVersion: stored.version, outbox: [committed]))
        let pending = try await fixture.other.pendingOutbox(createdBefore: .distantFuture, limit: 10)
        #expect(pending == [created.stored, committed.stored])
        #expect(pending.allSatisfy { $0.transientBody == nil && $0.body == created.body && $0.headers == created.headers })
    }

    /// `recordFailedAttempts` counts each failure and keeps a message from being due before its
    /// retry time, and due messages come in the order they became due, so messages that keep
    /// failing never keep a good one waiting; they stay pending for tools.
    ///
    /// 600 messages that can never be published, older than a good one: the relay reads 500 at
    /// a time, so without backoff the good one would wait for ever.
    public static let messagesThatKeepFailingDoNotKeepAGoodOneWaiting = Check("messagesThatKeepFailingDoNotKeepAGoodOneWaiting") {
        fixture in
        let store = fixture.store
        let now = milliseconds()
        let base = now.addingTimeInterval(-60)
        let bad = makeState()
        let badMessages = (0..<600).map { index in
            var message = makeMessage(sagaID: bad.id, createdAt: base.addingTimeInterval(Double(index) / 1000))
            message.exchange = "shop.commands"
            return message
        }
        _ = try await store.create(bad, outbox: badMessages)
        let good = makeState()
        var goodMessage = makeMessage(sagaID: good.id, createdAt: base.addingTimeInterval(10))
        goodMessage.exchange = "shop.commands"
        _ = try await store.create(good, outbox: [goodMessage])

        // Pass 1: the 500 oldest, all bad; each attempt fails and is recorded.
        let first = try await store.pendingOutbox(topology: "shop", createdBefore: now, now: now, limit: 500)
        #expect(first.map(\.id) == badMessages[0..<500].map(\.id))
        #expect(first.allSatisfy { $0.publishAttempts == 0 })
        let retryAt = now.addingTimeInterval(30)
        try await fixture.other.recordFailedAttempts(first.map(\.id) + ["no-such-message"], retryAt: retryAt)

        // Pass 2: the rest, and the good one, which is published.
        let second = try await store.pendingOutbox(topology: "shop", createdBefore: now, now: now, limit: 500)
        #expect(second.map(\.id) == badMessages[500...].map(\.id) + [goodMessage.id])
        try await store.recordFailedAttempts(Array(second.map(\.id).dropLast()), retryAt: retryAt.addingTimeInterval(1))
        try await store.markSent([goodMessage.id])

        // Nothing is due before the retry time; then the failed ones are, counted, in the
        // order they became due.
        #expect(try await store.pendingOutbox(topology: "shop", createdBefore: now, now: now, limit: 500).isEmpty)
        let later = retryAt.addingTimeInterval(5)
        let third = try await store.pendingOutbox(topology: "shop", createdBefore: now, now: later, limit: 1000)
        #expect(third.map(\.id) == badMessages.map(\.id))
        #expect(third.allSatisfy { $0.publishAttempts == 1 })

        // A second failure counts again; the messages stay pending for tools.
        try await store.recordFailedAttempts([badMessages[0].id], retryAt: later.addingTimeInterval(60))
        let fourth = try await store.pendingOutbox(topology: "shop", createdBefore: now, now: later, limit: 1)
        #expect(fourth.first?.id == badMessages[1].id)
        let all = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 1000)
        #expect(all.count == 600)
        #expect(all.first { $0.id == badMessages[0].id }?.publishAttempts == 2)
    }

    /// `pendingOutbox(of:)` lists one saga's unsent messages with their failed publishes, oldest
    /// first, and none of another saga's or of those sent.
    public static let oneSagasOutboxIsListedWithItsFailedPublishes = Check("oneSagasOutboxIsListedWithItsFailedPublishes") { fixture in
        let store = fixture.store
        let base = milliseconds().addingTimeInterval(-10)
        let saga = makeState()
        let messages = (0..<3).map { makeMessage(sagaID: saga.id, createdAt: base.addingTimeInterval(Double($0))) }
        _ = try await store.create(saga, outbox: messages)
        let other = makeState()
        _ = try await store.create(other, outbox: [makeMessage(sagaID: other.id, createdAt: base)])
        try await store.markSent([messages[0].id])
        try await store.recordFailedAttempts([messages[2].id], retryAt: base.addingTimeInterval(60))

        let pending = try await fixture.other.pendingOutbox(of: saga.id)
        #expect(pending.map(\.id) == [messages[1].id, messages[2].id])
        #expect(pending.map(\.publishAttempts) == [0, 1])
        #expect(try await store.pendingOutbox(of: "no-such-saga").isEmpty)
    }
}
