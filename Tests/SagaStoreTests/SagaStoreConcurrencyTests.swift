import Foundation
import SagaCore
import SagaTesting
import Testing

/// Races that every store must decide correctly.
@Suite("SagaStore concurrency", .timeLimit(.minutes(2)))
struct SagaStoreConcurrencyTests {
    @Test(arguments: StoreKind.allCases)
    func fiftyConcurrentCommitsFromOneVersionOneWins(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let state = try await fixture.store.create(Conformance.makeState(), outbox: []).state
            let results = await withTaskGroup(of: Result<SagaState, any Error>.self) { group in
                for index in 0..<50 {
                    let store = index.isMultiple(of: 2) ? fixture.store : fixture.other
                    var next = state
                    next.payload["winner"] = .number(Double(index))
                    let transition = SagaTransition(
                        state: next, expectedVersion: 1, outbox: [Conformance.makeMessage(sagaID: state.id, body: "\(index)")]
                    )
                    group.addTask {
                        do {
                            return .success(try await store.commit(transition))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let winners = results.compactMap { try? $0.get() }
            #expect(winners.count == 1)
            let conflicts = results.filter {
                if case .failure(let error as SagaError) = $0 { return error.code == .versionConflict }
                return false
            }
            #expect(conflicts.count == 49)

            let loaded = try await fixture.store.load(state.id)
            #expect(loaded.version == 2)
            #expect(loaded.payload["winner"] == winners.first?.payload["winner"])
            let outbox = try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 100)
            #expect(outbox.count == 1, "only the winner's message is recorded")
            #expect(
                outbox.first.map { String(decoding: $0.body, as: UTF8.self) }
                    == loaded.payload["winner"]?.intValue.map { "\($0)" })
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentClaimersNeverShareASaga(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let now = Conformance.milliseconds()
            let ids = (0..<40).map { _ in Conformance.uniqueID() }
            for (index, id) in ids.enumerated() {
                _ = try await fixture.store.create(
                    Conformance.makeState(id: id, updatedAt: now.addingTimeInterval(-600 + Double(index))), outbox: []
                )
            }
            let claims = try await withThrowingTaskGroup(of: [SagaID].self) { group in
                for claimer in 0..<8 {
                    let store = claimer.isMultiple(of: 2) ? fixture.store : fixture.other
                    group.addTask {
                        var mine: [SagaID] = []
                        while true {
                            let batch = try await store.claimStalled(
                                updatedBefore: now, now: now, owner: "reaper-\(claimer)", lease: .seconds(60), limit: 3
                            )
                            if batch.isEmpty { return mine }
                            mine += batch.map(\.id)
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let all = claims.flatMap { $0 }
            #expect(all.count == ids.count, "every saga claimed exactly once")
            #expect(Set(all) == Set(ids))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentTransitionsOfManySagasLoseNothing(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let ids = (0..<5).map { _ in Conformance.uniqueID() }
            for id in ids {
                _ = try await fixture.store.create(Conformance.makeState(id: id, payload: ["n": 0]), outbox: [])
            }
            let incrementsPerTask = 10
            let tasks = 8
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<tasks {
                    let store = task.isMultiple(of: 2) ? fixture.store : fixture.other
                    group.addTask {
                        for step in 0..<incrementsPerTask {
                            try await increment(store: store, id: ids[(task + step) % ids.count])
                        }
                    }
                }
                try await group.waitForAll()
            }
            var total = 0
            for id in ids {
                let state = try await fixture.store.load(id)
                let n = state.payload["n"]?.intValue ?? -1
                #expect(state.version == Int64(n + 1))
                total += n
            }
            #expect(total == tasks * incrementsPerTask)
            let outbox = try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 1000)
            #expect(outbox.count == tasks * incrementsPerTask)
        }
    }
}

extension SagaStoreConcurrencyTests {
    /// Stores batch concurrent writes: a batch holding winners and losers must judge each saga on
    /// its own, and record the outbox messages of the winners only.
    @Test(arguments: StoreKind.allCases)
    func concurrentCommitsAreJudgedPerSaga(kind: StoreKind) async throws {
        try await withStore(kind) { fixture in
            let states = try await withThrowingTaskGroup(of: SagaState.self) { group in
                for index in 0..<60 {
                    group.addTask {
                        try await fixture.store.create(Conformance.makeState(payload: ["i": .number(Double(index))]), outbox: []).state
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(states.count == 60)
            #expect(Set(states.map(\.id)).count == 60)
            // Every third commit uses a stale version; one goes to a saga that does not exist.
            let results = await withTaskGroup(of: (SagaID, Bool, Result<SagaState, any Error>).self) { group in
                for (index, state) in states.enumerated() {
                    let stale = index.isMultiple(of: 3)
                    var next = state
                    next.payload["done"] = true
                    let transition = SagaTransition(
                        state: next, expectedVersion: stale ? 7 : state.version, outbox: [Conformance.makeMessage(sagaID: state.id)])
                    group.addTask {
                        do {
                            return (state.id, stale, .success(try await fixture.store.commit(transition)))
                        } catch {
                            return (state.id, stale, .failure(error))
                        }
                    }
                }
                let ghost = Conformance.makeState(id: Conformance.uniqueID("ghost"))
                group.addTask {
                    do {
                        return (
                            ghost.id, true,
                            .success(try await fixture.store.commit(SagaTransition(state: ghost, expectedVersion: 1, outbox: [])))
                        )
                    } catch {
                        return (ghost.id, true, .failure(error))
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            var winners: Set<SagaID> = []
            for (id, stale, result) in results {
                switch result {
                case .success(let stored):
                    #expect(!stale, "saga \(id) committed with a stale version")
                    #expect(stored.version == 2)
                    winners.insert(id)
                case .failure(let error as SagaError):
                    #expect(stale, "saga \(id) failed: \(error)")
                    let expected: SagaError.Code = id.hasPrefix("ghost") ? .unknownSaga : .versionConflict
                    #expect(error.code == expected)
                case .failure(let error):
                    Issue.record("unexpected error \(error)")
                }
            }
            #expect(winners.count == 40)
            for state in states {
                let loaded = try await fixture.store.load(state.id)
                #expect(loaded.version == (winners.contains(state.id) ? 2 : 1))
            }
            let outbox = try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 1000)
            #expect(Set(outbox.map(\.sagaID)) == winners)
            // Concurrent marks land together, and each call's messages are marked.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for message in outbox { group.addTask { try await fixture.store.markSent([message.id]) } }
                try await group.waitForAll()
            }
            #expect(try await fixture.store.pendingOutbox(createdBefore: .distantFuture, limit: 1000).isEmpty)
        }
    }
}

/// Loads a saga, adds 1 to `payload.n` and commits with one outbox message, retrying on conflict.
func increment(store: any SagaStore, id: SagaID) async throws {
    while true {
        let state = try await store.load(id)
        var next = state
        next.payload["n"] = .number(Double((state.payload["n"]?.intValue ?? 0) + 1))
        next.updatedAt = Conformance.milliseconds()
        do {
            try await store.commit(
                SagaTransition(state: next, expectedVersion: state.version, outbox: [Conformance.makeMessage(sagaID: id)])
            )
            return
        } catch let error as SagaError where error.code == .versionConflict {
            continue
        }
    }
}
