import Foundation
import SagaCore
import Testing

/// The contract of ``SagaStore``, run against every implementation.
@Suite("SagaStore conformance", .timeLimit(.minutes(1)))
struct SagaStoreConformanceTests {
    @Test(arguments: StoreKind.allCases)
    func createIsIdempotentAndStartsAtVersionOne(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            var state = makeState()
            state.version = 99
            let first = makeMessage(sagaID: state.id)
            let created = try await store.create(state, outbox: [first])
            guard case .created(let stored) = created else {
                Issue.record("expected .created, got \(created)")
                return
            }
            #expect(stored.version == 1)
            var expected = state
            expected.version = 1
            #expect(stored == expected)
            #expect(try await store.load(state.id) == expected)

            var again = state
            again.payload = ["orderId": "other"]
            let second = makeMessage(sagaID: state.id)
            let existing = try await fixture.other.create(again, outbox: [second])
            #expect(existing == .existing(expected))
            #expect(existing.state == expected)

            let pending = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
            #expect(pending.map(\.id) == [first.id], "the second create must record no message")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func loadingAnUnknownSagaThrowsUnknownSaga(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let id = uniqueID()
            let error = await expectSagaError(.unknownSaga) { _ = try await fixture.store.load(id) }
            #expect(error?.message.contains(id) == true)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func commitSwapsTheVersionAndRecordsTheOutbox(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let state = try await store.create(makeState(), outbox: []).state

            var next = state
            next.currentStep = 1
            next.payload["reserved"] = true
            next.updatedAt = milliseconds(state.updatedAt.addingTimeInterval(1))
            next.version = 500  // ignored
            let message = makeMessage(sagaID: state.id)
            let committed = try await store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: [message]))
            next.version = 2
            #expect(committed == next)
            #expect(try await fixture.other.load(state.id) == next)
            #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10) == [message])

            var third = next
            third.currentStep = 2
            let after = try await store.commit(SagaTransition(state: third, expectedVersion: 2, outbox: []))
            #expect(after.version == 3)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aConflictingCommitChangesNothingAndSaysWhichVersions(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let state = try await store.create(makeState(), outbox: []).state
            var next = state
            next.currentStep = 1
            try await store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: []))

            var stale = state
            stale.status = .compensating
            let lost = makeMessage(sagaID: state.id)
            let error = await expectSagaError(.versionConflict) {
                try await fixture.other.commit(SagaTransition(state: stale, expectedVersion: 1, outbox: [lost]))
            }
            #expect(error?.message.contains("expected version 1") == true, "\(String(describing: error))")
            #expect(error?.message.contains("store has 2") == true, "\(String(describing: error))")

            let loaded = try await store.load(state.id)
            #expect(loaded.version == 2)
            #expect(loaded.status == .running)
            #expect(loaded.currentStep == 1)
            #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func committingAnUnknownSagaThrowsUnknownSaga(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let state = makeState()
            await expectSagaError(.unknownSaga) {
                try await fixture.store.commit(
                    SagaTransition(state: state, expectedVersion: 1, outbox: [makeMessage(sagaID: state.id)])
                )
            }
            let pending = try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 10)
            #expect(pending.isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func payloadsRoundTripExactly(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let payload: JSONObject = [
                "orderId": "42",
                "unicode": "Grüße, 世界 👩‍👩‍👧 e\u{301} \"quoted\" back\\slash /slash\n\ttab",
                "control": "nul \u{0} bell \u{7}",
                "numbers": [0, -1, 0.1, -1e-7, 1e300, 9_007_199_254_740_992, 3.141592653589793],
                "flags": [true, false, nil],
                "nested": ["a": ["b": ["c": [1, ["d": "deep"]]]], "empty": [:], "list": []],
                "ключ": "значение",
                "": "empty key",
            ]
            let state = makeState(payload: payload)
            _ = try await fixture.store.create(state, outbox: [])
            #expect(try await fixture.store.load(state.id).payload == payload)

            var next = state
            next.payload = payload.merging(patch: ["nested": nil, "added": ["x": 1.5]])
            let committed = try await fixture.store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: []))
            #expect(committed.payload == next.payload)
            #expect(try await fixture.other.load(state.id).payload == next.payload)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func everyFieldRoundTripsIncludingHistory(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let start = milliseconds()
            var state = makeState(updatedAt: start)
            state.status = .compensating
            state.currentStep = 3
            state.attempt = 2
            state.context = ["traceparent": "00-abc-def-01", "correlationId": "c-1", "ü": "ö"]
            state.failureReason = "payment declined: card expired ⚠️"
            state.deadline = milliseconds(start.addingTimeInterval(3600))
            state.reapAttempts = 4
            state.createdAt = milliseconds(start.addingTimeInterval(-60))
            state.history = [
                StepRecord(
                    step: 0, stepName: "reserve", phase: .action, attempt: 1, startedAt: milliseconds(start),
                    finishedAt: milliseconds(start.addingTimeInterval(0.123)), outcome: .completed
                ),
                StepRecord(
                    step: 1, stepName: "charge", phase: .action, attempt: 1,
                    startedAt: milliseconds(start.addingTimeInterval(0.2)),
                    finishedAt: milliseconds(start.addingTimeInterval(0.5)), outcome: .failed,
                    error: "card expired"
                ),
                StepRecord(
                    step: 0, stepName: "reserve", phase: .compensation, attempt: 1,
                    startedAt: milliseconds(start.addingTimeInterval(0.6)),
                    finishedAt: milliseconds(start.addingTimeInterval(0.7)), outcome: .retrying, error: "timeout"
                ),
            ]
            let created = try await fixture.store.create(state, outbox: []).state
            state.version = 1
            #expect(created == state)
            #expect(try await fixture.other.load(state.id) == state)

            var next = state
            next.history.append(
                StepRecord(
                    step: 0, stepName: "reserve", phase: .compensation, attempt: 2,
                    startedAt: milliseconds(start.addingTimeInterval(1)),
                    finishedAt: milliseconds(start.addingTimeInterval(1.001)), outcome: .resent
                )
            )
            next.deadline = nil
            next.failureReason = nil
            try await fixture.store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: []))
            next.version = 2
            #expect(try await fixture.other.load(state.id) == next)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func timestampsKeepMilliseconds(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let precise = Date(timeIntervalSince1970: 1_750_000_000.123_456_7)
            var state = makeState(updatedAt: precise)
            state.deadline = precise.addingTimeInterval(0.000_4)
            state.history = [
                StepRecord(
                    step: 0, stepName: "s", phase: .action, attempt: 1, startedAt: precise, finishedAt: precise,
                    outcome: .completed
                )
            ]
            _ = try await fixture.store.create(state, outbox: [])
            let loaded = try await fixture.store.load(state.id)
            for (written, read) in [
                (state.createdAt, loaded.createdAt), (state.updatedAt, loaded.updatedAt),
                (state.deadline!, loaded.deadline!), (precise, loaded.history[0].startedAt),
            ] {
                #expect(abs(written.timeIntervalSince(read)) < 0.000_5 + 1e-9, "\(written) → \(read)")
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func outboxIsPendingOldestFirstUntilMarkedSent(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let base = milliseconds(Date().addingTimeInterval(-100))
            let state = makeState()
            var messages = (0..<5).map { index in
                makeMessage(sagaID: state.id, createdAt: base.addingTimeInterval(Double(index)))
            }
            messages[2].body = Array(0...255)
            messages[2].headers = ["x-ünïcode": "✓", "empty": ""]
            _ = try await store.create(state, outbox: Array(messages[0..<2]))
            var next = state
            next.currentStep = 1
            try await store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: Array(messages[2...])))

            #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100) == messages)
            #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 2) == Array(messages[0..<2]))
            #expect(
                try await store.pendingOutbox(createdBefore: base.addingTimeInterval(2), limit: 100)
                    == Array(messages[0..<2])
            )
            #expect(try await store.pendingOutbox(createdBefore: base, limit: 100).isEmpty)

            try await fixture.other.markSent([messages[0].id, messages[3].id, "no-such-message"])
            #expect(
                try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
                    == [messages[1], messages[2], messages[4]]
            )
            try await store.markSent([])
            try await store.markSent(messages.map(\.id))
            #expect(try await store.pendingOutbox(createdBefore: .distantFuture, limit: 100).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func messagesWithTheSameTimeKeepTheirOrder(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let now = milliseconds()
            let state = makeState()
            let messages = (0..<4).map { _ in makeMessage(sagaID: state.id, createdAt: now) }
            _ = try await fixture.store.create(state, outbox: messages)
            #expect(try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 10) == messages)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func listFiltersAndSortsByUpdateTime(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let name = uniqueID("definition")
            let base = milliseconds(Date().addingTimeInterval(-1000))
            let statuses: [SagaStatus] = [.running, .compensating, .completed, .compensated, .needsAttention, .running]
            var states: [SagaState] = []
            for (index, status) in statuses.enumerated() {
                var state = makeState(name: name, status: status, updatedAt: base.addingTimeInterval(Double(index)))
                state.version = 1
                _ = try await store.create(state, outbox: [])
                states.append(state)
            }
            let other = makeState(name: uniqueID("other"), updatedAt: base)
            _ = try await store.create(other, outbox: [])

            let all = try await store.list(SagaQuery(name: name))
            #expect(all == states.reversed())
            let running = try await store.list(SagaQuery(statuses: [.running], name: name))
            #expect(running.map(\.id) == [states[5].id, states[0].id])
            let terminal = try await store.list(SagaQuery(statuses: [.completed, .compensated], name: name))
            #expect(terminal.map(\.id) == [states[3].id, states[2].id])
            let old = try await store.list(SagaQuery(name: name, updatedBefore: base.addingTimeInterval(2)))
            #expect(old.map(\.id) == [states[1].id, states[0].id])
            let limited = try await store.list(SagaQuery(name: name, limit: 2))
            #expect(limited.map(\.id) == [states[5].id, states[4].id])
            #expect(try await store.list(SagaQuery(statuses: [], name: name)).isEmpty)
            let everything = try await store.list(SagaQuery(limit: 1000))
            #expect(Set(everything.map(\.id)) == Set(states.map(\.id) + [other.id]))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func countByStatusCountsEveryStatus(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let name = uniqueID("definition")
            for status: SagaStatus in [.running, .running, .completed, .needsAttention] {
                _ = try await fixture.store.create(makeState(name: name, status: status), outbox: [])
            }
            _ = try await fixture.store.create(makeState(name: uniqueID("other"), status: .compensated), outbox: [])

            let counts = try await fixture.store.countByStatus(name: name)
            #expect(counts == [.running: 2, .compensating: 0, .completed: 1, .compensated: 0, .needsAttention: 1])
            let all = try await fixture.store.countByStatus(name: nil)
            #expect(all == [.running: 2, .compensating: 0, .completed: 1, .compensated: 1, .needsAttention: 1])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func claimStalledLeasesSagasUntilTheLeaseExpires(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let now = milliseconds()
            let old = now.addingTimeInterval(-600)
            let running = makeState(status: .running, updatedAt: old)
            let compensating = makeState(status: .compensating, updatedAt: old.addingTimeInterval(1))
            let completed = makeState(status: .completed, updatedAt: old)
            let needsAttention = makeState(status: .needsAttention, updatedAt: old)
            let fresh = makeState(status: .running, updatedAt: now)
            for state in [running, compensating, completed, needsAttention, fresh] {
                _ = try await store.create(state, outbox: [])
            }
            let cutoff = now.addingTimeInterval(-60)

            let first = try await store.claimStalled(
                updatedBefore: cutoff, now: now, owner: "reaper-a", lease: .seconds(30), limit: 10
            )
            #expect(first.map(\.id) == [running.id, compensating.id], "oldest first, only running or compensating")
            #expect(first.allSatisfy { $0.version == 1 }, "claiming does not change the version")

            let second = try await fixture.other.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(29), owner: "reaper-b", lease: .seconds(30),
                limit: 10
            )
            #expect(second.isEmpty, "leased to reaper-a")

            let sameOwner = try await store.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(29), owner: "reaper-a", lease: .seconds(30),
                limit: 10
            )
            #expect(sameOwner.isEmpty, "a valid lease excludes its owner too")

            // reaper-a's leases end at now + 30 s.
            let afterExpiry = try await fixture.other.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(30), owner: "reaper-b", lease: .seconds(30), limit: 1
            )
            #expect(afterExpiry.map(\.id) == [running.id], "limit respected, oldest first")
            let rest = try await store.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(30), owner: "reaper-c", lease: .seconds(30),
                limit: 10
            )
            #expect(rest.map(\.id) == [compensating.id])
            let none = try await store.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(59), owner: "reaper-a", lease: .seconds(30),
                limit: 10
            )
            #expect(none.isEmpty)
            let both = try await store.claimStalled(
                updatedBefore: cutoff, now: now.addingTimeInterval(60), owner: "reaper-a", lease: .seconds(30),
                limit: 10
            )
            #expect(both.map(\.id) == [running.id, compensating.id])
            #expect(try await store.load(running.id).version == 1)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aCommitEndsTheLease(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let store = fixture.store
            let now = milliseconds()
            let state = makeState(updatedAt: now.addingTimeInterval(-600))
            _ = try await store.create(state, outbox: [])
            let claimed = try await store.claimStalled(
                updatedBefore: now, now: now, owner: "reaper-a", lease: .seconds(300), limit: 10
            )
            #expect(claimed.map(\.id) == [state.id])

            var next = claimed[0]
            next.reapAttempts += 1
            try await store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: []))
            let again = try await fixture.other.claimStalled(
                updatedBefore: now, now: now, owner: "reaper-b", lease: .seconds(300), limit: 10
            )
            #expect(again.map(\.id) == [state.id])
            #expect(again.first?.version == 2)
            #expect(again.first?.reapAttempts == 1)
        }
    }
}
