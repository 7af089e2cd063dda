import Foundation
import Participant
import Testing

/// The checks of creating, loading, committing, listing and claiming sagas, and of the outbox as
/// tools read it.
extension SagaStoreConformance {
    /// `create` stores the saga at version 1 (whatever version it was given) with its outbox; a second
    /// `create` of the same id, from either handle, writes nothing (no state change, no message) and
    /// returns the stored saga as `.existing`.
    public static let createIsIdempotentAndStartsAtVersionOne = Check("createIsIdempotentAndStartsAtVersionOne") { fixture in
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

    /// `load` of an id that is not stored throws `SagaError` `unknownSaga`, whose message names the
    /// id.
    public static let loadingAnUnknownSagaThrowsUnknownSaga = Check("loadingAnUnknownSagaThrowsUnknownSaga") { fixture in
        let id = uniqueID()
        let error = await expectSagaError(.unknownSaga) { _ = try await fixture.store.load(id) }
        #expect(error?.message.contains(id) == true)
    }

    /// `commit` at the stored version writes the new state at `expectedVersion + 1` (ignoring the
    /// state's own version), returns it, makes it visible to the other handle, and records the
    /// transition's outbox messages.
    public static let commitSwapsTheVersionAndRecordsTheOutbox = Check("commitSwapsTheVersionAndRecordsTheOutbox") { fixture in
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

    /// A `commit` whose expected version is stale throws `SagaError` `versionConflict` saying
    /// "expected version N" and "store has M", and writes neither the state nor its messages.
    public static let aConflictingCommitChangesNothingAndSaysWhichVersions = Check("aConflictingCommitChangesNothingAndSaysWhichVersions") {
        fixture in
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

    /// `commit` of a saga that is not stored throws `SagaError` `unknownSaga` and records none of its
    /// messages.
    public static let committingAnUnknownSagaThrowsUnknownSaga = Check("committingAnUnknownSagaThrowsUnknownSaga") { fixture in
        let state = makeState()
        await expectSagaError(.unknownSaga) {
            try await fixture.store.commit(
                SagaTransition(state: state, expectedVersion: 1, outbox: [makeMessage(sagaID: state.id)])
            )
        }
        let pending = try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 10)
        #expect(pending.isEmpty)
    }

    /// Payloads come back exactly as written, through `create` and `commit` and from the other handle:
    /// Unicode (combining marks, emoji sequences, non-Latin keys, the empty key), control characters
    /// and NUL, escapes, extreme and fractional numbers, `null`, nested and empty objects and arrays.
    public static let payloadsRoundTripExactly = Check("payloadsRoundTripExactly") { fixture in
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

    /// Every field of a `SagaState` round-trips: status, step, attempt, context, failure reason,
    /// deadline, reap attempts, creation time and the step history (each record's phase, outcome and
    /// error); fields set back to `nil` by a commit read back as `nil`.
    public static let everyFieldRoundTripsIncludingHistory = Check("everyFieldRoundTripsIncludingHistory") { fixture in
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
                error: "card expired", instance: "payment-2@host-ä"
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

    /// Timestamps (creation, update, deadline, history) keep at least millisecond precision.
    public static let timestampsKeepMilliseconds = Check("timestampsKeepMilliseconds") { fixture in
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

    /// `pendingOutbox(createdBefore:limit:)` returns unsent messages oldest first, honours the limit
    /// and the creation cutoff, keeps bodies (every byte value) and headers exactly; `markSent` (from
    /// either handle) removes them for good and ignores unknown ids and an empty list.
    public static let outboxIsPendingOldestFirstUntilMarkedSent = Check("outboxIsPendingOldestFirstUntilMarkedSent") { fixture in
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

    /// Messages created at the same millisecond are pending in the order they were recorded.
    public static let messagesWithTheSameTimeKeepTheirOrder = Check("messagesWithTheSameTimeKeepTheirOrder") { fixture in
        let now = milliseconds()
        let state = makeState()
        let messages = (0..<4).map { _ in makeMessage(sagaID: state.id, createdAt: now) }
        _ = try await fixture.store.create(state, outbox: messages)
        #expect(try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 10) == messages)
    }

    /// `list` returns the most recently updated first and filters by definition name, statuses (an
    /// empty set matches nothing), `updatedBefore` and limit; without filters it returns every saga.
    public static let listFiltersAndSortsByUpdateTime = Check("listFiltersAndSortsByUpdateTime") { fixture in
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

    /// A circuit breaker is closed (version 0) until saved; a save succeeds only against the
    /// version it expects (so two instances recording at once never lose a failure), keeps the
    /// open time to the millisecond, and is seen by the other handle on the same data.
    public static let circuitsAreComparedAndSwapped = Check("circuitsAreComparedAndSwapped") { fixture in
        let key = uniqueID("order") + "/charge-card"
        let store = fixture.store
        #expect(try await store.circuit(key) == StoredCircuit(state: .closed, version: 0))
        #expect(try await store.saveCircuit(key, CircuitBreakerState(failures: 1), expectedVersion: 0))
        let twice = try await fixture.other.saveCircuit(key, CircuitBreakerState(failures: 1), expectedVersion: 0)
        #expect(!twice, "inserted twice")
        let opened = CircuitBreakerState(failures: 2, openedAt: milliseconds())
        #expect(try await fixture.other.saveCircuit(key, opened, expectedVersion: 1))
        let stale = try await store.saveCircuit(key, .closed, expectedVersion: 1)
        #expect(!stale, "a stale version overwrote the circuit")
        #expect(try await store.circuit(key) == StoredCircuit(state: opened, version: 2))
        #expect(try await store.saveCircuit(key, .closed, expectedVersion: 2))
        #expect(try await fixture.other.circuit(key) == StoredCircuit(state: .closed, version: 3))
        #expect(try await store.circuit(uniqueID("other")).version == 0)
    }

    /// A participant's record is inserted, then refreshed in place (its commands and last-seen
    /// time, not its start), read back to the millisecond by the other handle, and removed; a
    /// record not refreshed for ``ParticipantInstance/retention`` is removed by the next record.
    public static let participantsAreRecordedRefreshedAndRemoved = Check("participantsAreRecordedRefreshedAndRemoved") {
        fixture in
        let topology = uniqueID("topology")
        let started = milliseconds(Date().addingTimeInterval(-60))
        let first = ParticipantInstance(
            topology: topology, service: "inventory", instance: "host-a:1:x", commands: ["inventory.reserve"],
            startedAt: started, lastSeen: started, reportInterval: .seconds(15))
        let second = ParticipantInstance(
            topology: topology, service: "inventory", instance: "host-b:2:y", commands: ["inventory.reserve"],
            startedAt: started, lastSeen: started, reportInterval: .milliseconds(2500))
        try await fixture.store.recordParticipant(first)
        try await fixture.other.recordParticipant(second)
        func recorded() async throws -> [ParticipantInstance] {
            try await fixture.other.participants().filter { $0.topology == topology }
        }
        #expect(try await recorded() == [first, second])
        // A newer release of the first instance's process handles one more command.
        var refreshed = first
        refreshed.commands = ["inventory.release", "inventory.reserve"]
        refreshed.lastSeen = milliseconds()
        refreshed.reportInterval = .seconds(5)
        try await fixture.store.recordParticipant(refreshed)
        #expect(try await recorded() == [refreshed, second])
        try await fixture.store.removeParticipant(topology: topology, service: "inventory", instance: second.instance)
        try await fixture.store.removeParticipant(topology: topology, service: "inventory", instance: "never-recorded")
        #expect(try await recorded() == [refreshed])
        // A process killed without a graceful stop: its record goes once the retention passed.
        let long = ParticipantInstance.retention.seconds + 3600
        let dead = ParticipantInstance(
            topology: topology, service: "payments", instance: "host-c:3:z", commands: ["payments.charge"],
            startedAt: milliseconds(Date().addingTimeInterval(-long - 60)), lastSeen: milliseconds(Date().addingTimeInterval(-long)),
            reportInterval: .seconds(15))
        try await fixture.store.recordParticipant(dead)
        #expect(try await recorded().map(\.instance) == [refreshed.instance, dead.instance])
        refreshed.lastSeen = milliseconds()
        try await fixture.other.recordParticipant(refreshed)
        #expect(try await recorded().map(\.instance) == [refreshed.instance])
    }

    /// `countByStatus` has an entry for every status (0 when there is none), for one definition name
    /// or for all.
    public static let countByStatusCountsEveryStatus = Check("countByStatusCountsEveryStatus") { fixture in
        let name = uniqueID("definition")
        for status: SagaStatus in [.running, .running, .waiting, .completed, .needsAttention] {
            _ = try await fixture.store.create(makeState(name: name, status: status), outbox: [])
        }
        _ = try await fixture.store.create(makeState(name: uniqueID("other"), status: .compensated), outbox: [])

        let counts = try await fixture.store.countByStatus(name: name)
        #expect(counts == [.running: 2, .compensating: 0, .waiting: 1, .completed: 1, .compensated: 0, .needsAttention: 1])
        let all = try await fixture.store.countByStatus(name: nil)
        #expect(all == [.running: 2, .compensating: 0, .waiting: 1, .completed: 1, .compensated: 1, .needsAttention: 1])
    }

    /// `claimStalled` returns only running or compensating sagas not updated since the cutoff, oldest
    /// first, up to the limit, without changing their version; a claimed saga is not returned again to
    /// anyone (its owner included) until `now` reaches the end of its lease.
    public static let claimStalledLeasesSagasUntilTheLeaseExpires = Check("claimStalledLeasesSagasUntilTheLeaseExpires") { fixture in
        let store = fixture.store
        let now = milliseconds()
        let old = now.addingTimeInterval(-600)
        let running = makeState(status: .running, updatedAt: old)
        let compensating = makeState(status: .compensating, updatedAt: old.addingTimeInterval(1))
        let completed = makeState(status: .completed, updatedAt: old)
        let needsAttention = makeState(status: .needsAttention, updatedAt: old)
        // A saga at a wait step is not stalled: the reaper ends its wait by its timeout instead.
        let waiting = makeState(status: .waiting, updatedAt: old)
        let fresh = makeState(status: .running, updatedAt: now)
        for state in [running, compensating, completed, needsAttention, waiting, fresh] {
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

    /// `claimStalled(…, topology:)` claims the stalled sagas of that topology and those that name
    /// none, and leaves another topology's sagas unleased for that topology's reapers.
    public static let claimStalledForATopologyLeavesOtherTopologiesAlone = Check(
        "claimStalledForATopologyLeavesOtherTopologiesAlone"
    ) { fixture in
        let store = fixture.store
        let now = milliseconds()
        let old = now.addingTimeInterval(-600)
        var ours = makeState(updatedAt: old)
        ours.context[SagaState.topologyKey] = "shop"
        var theirs = makeState(updatedAt: old.addingTimeInterval(1))
        theirs.context[SagaState.topologyKey] = "billing"
        let untagged = makeState(updatedAt: old.addingTimeInterval(2))
        var newerTheirs = makeState(updatedAt: old.addingTimeInterval(3))
        newerTheirs.context[SagaState.topologyKey] = "billing"
        for state in [ours, theirs, untagged, newerTheirs] {
            _ = try await store.create(state, outbox: [])
        }
        let cutoff = now.addingTimeInterval(-60)
        // A limit of 2: another topology's older saga does not take a place in the batch.
        let shop = try await store.claimStalled(
            updatedBefore: cutoff, now: now, owner: "shop-reaper", lease: .seconds(30), limit: 2, topology: "shop")
        #expect(shop.map(\.id) == [ours.id, untagged.id], "its own and the untagged, oldest first")
        let billing = try await fixture.other.claimStalled(
            updatedBefore: cutoff, now: now, owner: "billing-reaper", lease: .seconds(30), limit: 10, topology: "billing")
        #expect(billing.map(\.id) == [theirs.id, newerTheirs.id], "not leased by the other topology's reaper")
        let all = try await store.claimStalled(
            updatedBefore: cutoff, now: now.addingTimeInterval(30), owner: "any", lease: .seconds(30), limit: 10)
        #expect(all.count == 4, "without a topology, every stalled saga")
    }

    /// `list` with ``SagaQuery/topology`` and `countByStatus(name:topology:)` find the sagas of
    /// that topology and those that name none, and leave another topology's out; without a
    /// topology they find all.
    public static let listingAndCountingForATopologyLeaveOtherTopologiesOut = Check(
        "listingAndCountingForATopologyLeaveOtherTopologiesOut"
    ) { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let base = milliseconds()
        var ours = makeState(name: name, status: .running, updatedAt: base)
        ours.context[SagaState.topologyKey] = "shop"
        var theirs = makeState(name: name, status: .running, updatedAt: base.addingTimeInterval(1))
        theirs.context[SagaState.topologyKey] = "billing"
        let untagged = makeState(name: name, status: .completed, updatedAt: base.addingTimeInterval(2))
        var theirsDone = makeState(name: name, status: .completed, updatedAt: base.addingTimeInterval(3))
        theirsDone.context[SagaState.topologyKey] = "billing"
        for state in [ours, theirs, untagged, theirsDone] {
            _ = try await store.create(state, outbox: [])
        }
        let shop = try await fixture.other.list(SagaQuery(name: name, topology: "shop"))
        #expect(shop.map(\.id) == [untagged.id, ours.id], "its own and the untagged, newest first")
        let billingRunning = try await store.list(SagaQuery(statuses: [.running], name: name, topology: "billing"))
        #expect(billingRunning.map(\.id) == [theirs.id])
        #expect(try await store.list(SagaQuery(name: name)).count == 4, "without a topology, all")
        #expect(try await store.list(SagaQuery(name: name, topology: "none-of-these")).map(\.id) == [untagged.id])

        let shopCounts = try await fixture.other.countByStatus(name: name, topology: "shop")
        #expect(shopCounts[.running] == 1 && shopCounts[.completed] == 1 && shopCounts.count == SagaStatus.allCases.count)
        let billingCounts = try await store.countByStatus(name: name, topology: "billing")
        #expect(billingCounts[.running] == 1 && billingCounts[.completed] == 2)
        let all = try await store.countByStatus(name: name, topology: nil)
        #expect(all[.running] == 2 && all[.completed] == 2)
    }

    /// A `commit` of a claimed saga ends its lease: once stalled again, another owner can claim it at
    /// once, and receives the committed version.
    public static let aCommitEndsTheLease = Check("aCommitEndsTheLease") { fixture in
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

    /// `countByVersion(name:topology:)` counts each version's sagas by status, a saga without a
    /// version on version 1, every status present for a version found; another name's sagas and
    /// another topology's are left out. `unfinishedByVersion(name:topology:)` counts the same
    /// sagas that have not ended, and leaves out the versions without any.
    public static let countByVersionCountsEachVersionsSagas = Check("countByVersionCountsEachVersionsSagas") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        func saga(version: Int?, status: SagaStatus = .running, name: String = name, topology: String? = nil) -> SagaState {
            var state = makeState(name: name, status: status)
            if let version { state.definitionVersion = version }
            if let topology { state.context[SagaState.topologyKey] = topology }
            return state
        }
        let sagas = [
            saga(version: nil), saga(version: 1, status: .compensated), saga(version: 2), saga(version: 2),
            saga(version: 2, status: .needsAttention), saga(version: 12, status: .completed, topology: "shop"),
            saga(version: 2, topology: "billing"), saga(version: 2, name: uniqueID("other")),
        ]
        for state in sagas { _ = try await store.create(state, outbox: []) }

        let counts = try await fixture.other.countByVersion(name: name, topology: nil)
        #expect(counts.keys.sorted() == [1, 2, 12])
        #expect(counts[1]?[.running] == 1 && counts[1]?[.compensated] == 1, "a saga without a version is on version 1")
        #expect(counts[2]?[.running] == 3 && counts[2]?[.needsAttention] == 1 && counts[2]?[.completed] == 0)
        #expect(counts[12]?[.completed] == 1)
        #expect(counts.values.allSatisfy { $0.count == SagaStatus.allCases.count }, "every status, 0 when none")
        let shop = try await store.countByVersion(name: name, topology: "shop")
        #expect(shop[2]?[.running] == 2 && shop[2]?[.needsAttention] == 1, "the untagged, not billing's")
        #expect(shop[12]?[.completed] == 1)
        #expect(try await store.countByVersion(name: uniqueID("unknown"), topology: nil).isEmpty)

        // The unfinished ones (running, waiting, compensating, needing attention), as the counts say.
        let unfinished = try await fixture.other.unfinishedByVersion(name: name, topology: nil)
        #expect(unfinished.keys.sorted() == [1, 2], "version 12's only saga completed: absent")
        #expect(unfinished[1] == [.running: 1, .waiting: 0, .compensating: 0, .needsAttention: 0])
        #expect(unfinished[2] == [.running: 3, .waiting: 0, .compensating: 0, .needsAttention: 1])
        let inShop = try await store.unfinishedByVersion(name: name, topology: "shop")
        #expect(inShop[2]?[.running] == 2 && inShop[2]?[.needsAttention] == 1 && inShop[1]?[.running] == 1, "the untagged, not billing's")
        #expect(try await store.unfinishedByVersion(name: uniqueID("unknown"), topology: nil).isEmpty)
    }

    /// `list` filters by ``SagaQuery/definitionVersion``: the version is read from the saga's
    /// context (``SagaState/definitionVersionKey``), and a saga without that key is on version 1.
    /// The filter combines with the name and the statuses, and sees versions written by `commit`.
    public static let listFiltersByDefinitionVersion = Check("listFiltersByDefinitionVersion") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let base = milliseconds(Date().addingTimeInterval(-1000))
        func saga(version: Int?, status: SagaStatus = .running, name: String = name, at offset: Double) -> SagaState {
            var state = makeState(name: name, status: status, updatedAt: base.addingTimeInterval(offset))
            if let version { state.definitionVersion = version }
            return state
        }
        let unversioned = saga(version: nil, at: 0)
        let one = saga(version: 1, at: 1)
        let two = saga(version: 2, at: 2)
        let twoCompleted = saga(version: 2, status: .completed, at: 3)
        let twelve = saga(version: 12, at: 4)
        let otherTwo = saga(version: 2, name: uniqueID("other"), at: 5)
        for state in [unversioned, one, two, twoCompleted, twelve, otherTwo] { _ = try await store.create(state, outbox: []) }

        let versionTwo = try await fixture.other.list(SagaQuery(name: name, definitionVersion: 2))
        #expect(versionTwo.map(\.id) == [twoCompleted.id, two.id])
        let versionOne = try await fixture.other.list(SagaQuery(name: name, definitionVersion: 1))
        #expect(versionOne.map(\.id) == [one.id, unversioned.id], "a saga without a version is on version 1")
        let runningTwo = try await store.list(SagaQuery(statuses: [.running], name: name, definitionVersion: 2))
        #expect(runningTwo.map(\.id) == [two.id])
        #expect(try await store.list(SagaQuery(name: name, definitionVersion: 12)).map(\.id) == [twelve.id])
        #expect(try await store.list(SagaQuery(name: name, definitionVersion: 3)).isEmpty)
        let anyName = try await store.list(SagaQuery(definitionVersion: 2, limit: 10_000))
        #expect(Set(anyName.map(\.id)).isSuperset(of: [two.id, twoCompleted.id, otherTwo.id]))
        #expect(!anyName.contains { $0.definitionVersion != 2 })

        // A commit that changes the pinned version moves the saga between the filters.
        var moved = try await store.load(unversioned.id)
        moved.definitionVersion = 2
        moved.updatedAt = base.addingTimeInterval(10)
        try await store.commit(SagaTransition(state: moved, expectedVersion: 1, outbox: []))
        let afterCommit = try await fixture.other.list(SagaQuery(name: name, definitionVersion: 2))
        #expect(afterCommit.map(\.id) == [unversioned.id, twoCompleted.id, two.id])
    }

    /// `list` filters by ``SagaQuery/minimumAttempt`` (the current command's attempt is at least
    /// that): combined with the statuses running and compensating it finds sagas retrying a step
    /// over and over; attempts written by `commit` count.
    public static let listFiltersByMinimumAttempt = Check("listFiltersByMinimumAttempt") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let base = milliseconds(Date().addingTimeInterval(-1000))
        func saga(attempt: Int, status: SagaStatus, at offset: Double) -> SagaState {
            var state = makeState(name: name, status: status, updatedAt: base.addingTimeInterval(offset))
            state.attempt = attempt
            state.currentStep = 2
            return state
        }
        let first = saga(attempt: 1, status: .running, at: 0)
        let fourth = saga(attempt: 4, status: .running, at: 1)
        let fifth = saga(attempt: 5, status: .running, at: 2)
        let ninthCompensating = saga(attempt: 9, status: .compensating, at: 3)
        let sixthStopped = saga(attempt: 6, status: .needsAttention, at: 4)
        for state in [first, fourth, fifth, ninthCompensating, sixthStopped] { _ = try await store.create(state, outbox: []) }

        let atLeastFive = try await fixture.other.list(SagaQuery(name: name, minimumAttempt: 5))
        #expect(atLeastFive.map(\.id) == [sixthStopped.id, ninthCompensating.id, fifth.id])
        let stuck = try await fixture.other.list(SagaQuery(statuses: [.running, .compensating], name: name, minimumAttempt: 5))
        #expect(stuck.map(\.id) == [ninthCompensating.id, fifth.id])
        #expect(try await store.list(SagaQuery(name: name, minimumAttempt: 1)).count == 5)
        #expect(try await store.list(SagaQuery(name: name, minimumAttempt: 10)).isEmpty)

        // One more failed attempt of the fourth: now it is stuck too.
        var retried = try await store.load(fourth.id)
        retried.attempt = 5
        retried.updatedAt = base.addingTimeInterval(10)
        try await store.commit(SagaTransition(state: retried, expectedVersion: 1, outbox: []))
        let afterCommit = try await fixture.other.list(SagaQuery(statuses: [.running, .compensating], name: name, minimumAttempt: 5))
        #expect(afterCommit.map(\.id) == [fourth.id, ninthCompensating.id, fifth.id])
    }

    /// `list` filters by ``SagaQuery/minimumReapAttempts`` (the reaper re-sent the saga at least
    /// that many times without progress since); re-sends written by `commit` count.
    public static let listFiltersByMinimumReapAttempts = Check("listFiltersByMinimumReapAttempts") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let base = milliseconds(Date().addingTimeInterval(-1000))
        func saga(reaped: Int, at offset: Double) -> SagaState {
            var state = makeState(name: name, status: .running, updatedAt: base.addingTimeInterval(offset))
            state.reapAttempts = reaped
            return state
        }
        let moving = saga(reaped: 0, at: 0)
        let once = saga(reaped: 1, at: 1)
        let thrice = saga(reaped: 3, at: 2)
        for state in [moving, once, thrice] { _ = try await store.create(state, outbox: []) }
        #expect(try await fixture.other.list(SagaQuery(name: name, minimumReapAttempts: 1)).map(\.id) == [thrice.id, once.id])
        #expect(try await fixture.other.list(SagaQuery(name: name, minimumReapAttempts: 3)).map(\.id) == [thrice.id])
        var resent = try await store.load(moving.id)
        resent.reapAttempts = 1
        resent.updatedAt = base.addingTimeInterval(10)
        try await store.commit(SagaTransition(state: resent, expectedVersion: 1, outbox: []))
        #expect(try await fixture.other.list(SagaQuery(name: name, minimumReapAttempts: 1)).map(\.id) == [moving.id, thrice.id, once.id])
    }

    /// `list` filters by ``SagaQuery/deadlineBefore``: sagas with a deadline before the time, not
    /// those without one or with a later one; deadlines written by `commit` count.
    public static let listFiltersByDeadline = Check("listFiltersByDeadline") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let now = milliseconds(Date())
        func saga(deadline: Double?, at offset: Double) -> SagaState {
            var state = makeState(name: name, status: .running, updatedAt: now.addingTimeInterval(offset - 100))
            state.deadline = deadline.map { now.addingTimeInterval($0) }
            return state
        }
        let none = saga(deadline: nil, at: 0)
        let passed = saga(deadline: -10, at: 1)
        let justPassed = saga(deadline: -0.001, at: 2)
        let later = saga(deadline: 60, at: 3)
        for state in [none, passed, justPassed, later] { _ = try await store.create(state, outbox: []) }
        #expect(try await fixture.other.list(SagaQuery(name: name, deadlineBefore: now)).map(\.id) == [justPassed.id, passed.id])
        #expect(try await fixture.other.list(SagaQuery(name: name, deadlineBefore: now.addingTimeInterval(-60))).isEmpty)
        // A commit that sets a deadline in the past (or clears one) is what the filter sees.
        var moved = try await store.load(later.id)
        moved.deadline = now.addingTimeInterval(-1)
        moved.updatedAt = now
        try await store.commit(SagaTransition(state: moved, expectedVersion: 1, outbox: []))
        var cleared = try await store.load(passed.id)
        cleared.deadline = nil
        cleared.updatedAt = now.addingTimeInterval(-0.5)
        try await store.commit(SagaTransition(state: cleared, expectedVersion: 1, outbox: []))
        #expect(try await fixture.other.list(SagaQuery(name: name, deadlineBefore: now)).map(\.id) == [later.id, justPassed.id])
    }

    /// `claimPendingOutbox` returns what `pendingOutbox` would, and defers each message it
    /// returns until the lease ends: a second claim (another process) gets the others, never the
    /// same ones; after the lease they are due again; sent ones never come back, and a failed
    /// attempt's retry time replaces the lease.
    public static let claimPendingOutboxLeasesTheMessagesItReturns = Check("claimPendingOutboxLeasesTheMessagesItReturns") {
        fixture in
        let store = fixture.store
        let topology = uniqueID("claim")
        let now = milliseconds(Date())
        var messages: [OutboxMessage] = []
        for saga in 0..<3 {
            let state = makeState()
            let own = (0..<2).map { index in
                var message = makeMessage(sagaID: state.id, createdAt: now.addingTimeInterval(-60 + Double(saga * 2 + index)))
                message.exchange = topology + ".commands"
                return message
            }
            messages += own
            _ = try await store.create(state, outbox: own)
        }
        let lease = Duration.seconds(30)
        func claim(_ store: any SagaStore, at time: Date, limit: Int) async throws -> [String] {
            try await store.claimPendingOutbox(topology: topology, createdBefore: time, now: time, lease: lease, limit: limit).map(\.id)
        }
        let first = try await claim(store, at: now, limit: 4)
        #expect(first == messages.prefix(4).map(\.id), "the oldest, in their order")
        let second = try await claim(fixture.other, at: now, limit: 4)
        #expect(second == messages.suffix(2).map(\.id), "the others only")
        #expect(try await claim(store, at: now.addingTimeInterval(29), limit: 10).isEmpty, "all leased")
        try await store.markSent([first[0]])
        try await store.recordFailedAttempts([first[1]], retryAt: now.addingTimeInterval(90))
        let afterLease = try await claim(fixture.other, at: now.addingTimeInterval(31), limit: 10)
        #expect(Set(afterLease) == Set(first.dropFirst(2) + second), "due again after the lease; sent and deferred ones not")
        try await fixture.other.markSent(afterLease)
        #expect(try await claim(store, at: now.addingTimeInterval(91), limit: 10) == [first[1]])
    }

    /// `list` filters by ``SagaQuery/currentStep``, combined with the other filters (how the
    /// reaper finds the sagas whose wait at one step has timed out); a commit that moves a saga
    /// to another step is what the filter sees.
    public static let listFiltersByCurrentStep = Check("listFiltersByCurrentStep") { fixture in
        let store = fixture.store
        let name = uniqueID("definition")
        let now = milliseconds(Date())
        func saga(step: Int, status: SagaStatus = .waiting, updatedSecondsAgo: Double) -> SagaState {
            var state = makeState(name: name, status: status, updatedAt: now.addingTimeInterval(-updatedSecondsAgo))
            state.currentStep = step
            return state
        }
        let longAgoAtOne = saga(step: 1, updatedSecondsAgo: 7200)
        let recentAtOne = saga(step: 1, updatedSecondsAgo: 60)
        let longAgoAtThree = saga(step: 3, updatedSecondsAgo: 7100)
        let runningAtOne = saga(step: 1, status: .running, updatedSecondsAgo: 7000)
        for state in [longAgoAtOne, recentAtOne, longAgoAtThree, runningAtOne] { _ = try await store.create(state, outbox: []) }
        let expiredAtOne = SagaQuery(statuses: [.waiting], name: name, updatedBefore: now.addingTimeInterval(-3600), currentStep: 1)
        #expect(try await fixture.other.list(expiredAtOne).map(\.id) == [longAgoAtOne.id])
        #expect(
            try await fixture.other.list(SagaQuery(name: name, currentStep: 1)).map(\.id) == [
                recentAtOne.id, runningAtOne.id, longAgoAtOne.id,
            ])
        #expect(try await fixture.other.list(SagaQuery(name: name, currentStep: 0)).isEmpty)
        var moved = try await store.load(longAgoAtThree.id)
        moved.currentStep = 1
        try await store.commit(SagaTransition(state: moved, expectedVersion: 1, outbox: []))
        #expect(try await fixture.other.list(expiredAtOne).map(\.id) == [longAgoAtThree.id, longAgoAtOne.id])
    }

    /// `purgeFinished` deletes completed and compensated sagas last updated before the time,
    /// oldest first and at most `limit`, of the topology (and those that name none); it keeps
    /// every other saga, and a finished one whose outbox message is not sent yet until it is.
    /// (Its sagas date from 2000, older than any other check's, since the store may be shared.)
    public static let purgeFinishedDeletesOldFinishedSagasWithNothingToSend = Check(
        "purgeFinishedDeletesOldFinishedSagasWithNothingToSend"
    ) { fixture in
        let store = fixture.store
        let topology = uniqueID("purge")
        let base = Date(timeIntervalSince1970: 946_684_800)
        func saga(_ status: SagaStatus, at offset: Double, topology recorded: String) -> SagaState {
            var state = makeState(status: status, updatedAt: base.addingTimeInterval(offset))
            state.context[SagaState.topologyKey] = recorded
            return state
        }
        let completed = saga(.completed, at: 1, topology: topology)
        let compensated = saga(.compensated, at: 2, topology: topology)
        let unsent = saga(.completed, at: 3, topology: topology)
        let stopped = saga(.needsAttention, at: 4, topology: topology)
        let running = saga(.running, at: 5, topology: topology)
        let recent = saga(.completed, at: 172_800, topology: topology)
        let elsewhere = saga(.completed, at: 6, topology: uniqueID("other"))
        let message = makeMessage(sagaID: unsent.id)
        for state in [completed, compensated, unsent, stopped, running, recent, elsewhere] {
            _ = try await store.create(state, outbox: state.id == unsent.id ? [message] : [])
        }
        let cutoff = base.addingTimeInterval(86_400)

        #expect(try await store.purgeFinished(before: cutoff, topology: topology, limit: 1) == 1)
        await expectSagaError(.unknownSaga) { _ = try await fixture.other.load(completed.id) }
        #expect(try await store.purgeFinished(before: cutoff, topology: topology, limit: 100) == 1)
        await expectSagaError(.unknownSaga) { _ = try await fixture.other.load(compensated.id) }
        for kept in [unsent, stopped, running, recent, elsewhere] {
            #expect(try await fixture.other.load(kept.id).status == kept.status, "\(kept.status) saga deleted")
        }
        // Once its message is sent, the saga goes too.
        try await store.markSent([message.id])
        #expect(try await store.purgeFinished(before: cutoff, topology: topology, limit: 100) == 1)
        await expectSagaError(.unknownSaga) { _ = try await fixture.other.load(unsent.id) }
        #expect(try await store.purgeFinished(before: cutoff, topology: topology, limit: 100) == 0)
    }
}
