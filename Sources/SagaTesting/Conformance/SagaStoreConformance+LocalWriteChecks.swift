import Foundation
import Participant
import Testing

/// Local writes (``LocalWrite``): the service's statements committed with a saga's transition.
///
/// Run ``localWriteChecks`` against a store whose ``SagaStore/supportsLocalWrites`` is `true`.
/// They need no table of their own: each check creates a uniquely named table with a local
/// write, reads it back through row-count expectations (an `UPDATE … SET n = n WHERE …` that
/// must affect exactly k rows), and drops it at the end.
extension SagaStoreConformance {
    /// The checks for stores that run local writes.
    public static let localWriteChecks: [Check] = [
        localWritesCommitWithTheTransition,
        aLostCompareAndSwapRunsNoLocalWrite,
        aFailingLocalWriteStoresNothing,
        localValuesAndPlaceholdersRoundTrip,
    ]

    /// Every store: a transition whose local writes cannot be stored — the store does not run
    /// local writes (`unsupported`), or the database cannot run the statement, here a table that
    /// does not exist (`storeUnavailable`: a deployment's mistake, redelivered until fixed, not
    /// the step's failure) — leaves the saga's version, state and outbox as they were.
    public static let localWritesThatCannotRunStoreNothing = Check("localWritesThatCannotRunStoreNothing") { fixture in
        let state = makeState()
        _ = try await fixture.store.create(state, outbox: [])
        var next = state
        next.currentStep = 1
        // A table that does not exist: a store that runs the statement fails it.
        let write = LocalWrite("UPDATE sagakit_no_such_table_\(UUID().uuidString.prefix(8)) SET n = 1", expecting: .atLeastOneRow)
        do {
            try await fixture.store.commit(
                SagaTransition(
                    state: next, expectedVersion: 1, outbox: [makeMessage(sagaID: state.id)], localWrites: [write]))
            Issue.record("a transition whose local write cannot run was stored")
        } catch let error as SagaError {
            let expected: SagaError.Code = fixture.store.supportsLocalWrites ? .storeUnavailable : .unsupported
            #expect(error.code == expected, "\(error)")
            if fixture.store.supportsLocalWrites {
                #expect(error.message.contains("redelivered until it works"), "\(error)")
            }
        }
        let stored = try await fixture.other.load(state.id)
        #expect(stored.version == 1)
        #expect(stored.currentStep == 0)
        #expect(try await fixture.other.pendingOutbox(createdBefore: .distantFuture, limit: 10).filter { $0.sagaID == state.id }.isEmpty)
    }

    /// A store that seals state copies (``SagaStore/stateSeal``) seals them so that another
    /// process of the same store verifies them, and no changed copy or changed seal verifies; a
    /// store that seals none does so in every process.
    public static let stateSealsVerifyInEveryProcessOfTheStoreOnly = Check("stateSealsVerifyInEveryProcessOfTheStoreOnly") { fixture in
        guard let sealer = fixture.store.stateSeal else {
            #expect(fixture.other.stateSeal == nil, "one process of the store seals copies, another does not")
            return
        }
        let verifier = try #require(fixture.other.stateSeal, "one process of the store seals copies, another does not")
        let bytes = Array(#"{"id":"s-1","payload":{"amount":5},"version":3}"#.utf8)
        let seal = try #require(sealer.seal(bytes), "a running store made no seal")
        #expect(verifier.verifies(seal, of: bytes))
        #expect(sealer.verifies(seal, of: bytes))
        #expect(!verifier.verifies(seal, of: Array(#"{"id":"s-1","payload":{"amount":6},"version":3}"#.utf8)))
        #expect(!verifier.verifies(String(seal.dropLast()), of: bytes))
        #expect(!verifier.verifies(String(seal.reversed()), of: bytes) || seal == String(seal.reversed()))
        #expect(!verifier.verifies("", of: bytes))
    }

    /// The local writes commit with the transition: afterwards the row is there, the saga has its
    /// new version and state, and the outbox holds the transition's message.
    public static let localWritesCommitWithTheTransition = Check("localWritesCommitWithTheTransition") { fixture in
        try await withLocalTable(fixture) { table in
            let state = makeState()
            _ = try await fixture.store.create(state, outbox: [])
            var next = state
            next.currentStep = 1
            let message = makeMessage(sagaID: state.id)
            let stored = try await fixture.store.commit(
                SagaTransition(
                    state: next, expectedVersion: 1, outbox: [message],
                    localWrites: [
                        LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, $2)", .text(state.id), 1, expecting: .rows(1)),
                        LocalWrite("UPDATE \(table.name) SET n = n + $1 WHERE id = $2", 41, .text(state.id), expecting: .atLeastOneRow),
                    ]))
            #expect(stored.version == 2)
            #expect(try await fixture.other.load(state.id).currentStep == 1)
            #expect(try await fixture.other.pendingOutbox(createdBefore: .distantFuture, limit: 10).contains(message))
            #expect(try await table.count("id = $1 AND n = $2", .text(state.id), 42) == 1)
        }
    }

    /// A commit that loses its compare-and-swap runs none of its local writes: the duplicate of a
    /// step applies its effect once, without an idempotency key. The winner's write is there, the
    /// loser's is not, and the loser learns the versions from `versionConflict`.
    public static let aLostCompareAndSwapRunsNoLocalWrite = Check("aLostCompareAndSwapRunsNoLocalWrite") { fixture in
        try await withLocalTable(fixture) { table in
            let state = makeState()
            _ = try await fixture.store.create(state, outbox: [])
            var next = state
            next.currentStep = 1
            func transition(_ delivery: String) -> SagaTransition {
                SagaTransition(
                    state: next, expectedVersion: 1, outbox: [makeMessage(sagaID: state.id)],
                    localWrites: [LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, 1)", .text(delivery))])
            }
            // Two deliveries of one step, one after the other and then at the same time.
            try await fixture.store.commit(transition("first"))
            await expectSagaError(.versionConflict) { try await fixture.other.commit(transition("second")) }
            #expect(try await table.count("id = $1", "first") == 1)
            #expect(try await table.count("id = $1", "second") == 0)

            var third = next
            third.currentStep = 2
            let racing = third
            let results = await withTaskGroup(of: Bool.self) { group in
                for (index, store) in [fixture.store, fixture.other, fixture.store, fixture.other].enumerated() {
                    group.addTask {
                        let racer = SagaTransition(
                            state: racing, expectedVersion: 2, outbox: [],
                            localWrites: [LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, 2)", .text("race-\(index)"))])
                        return (try? await store.commit(racer)) != nil
                    }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.filter { $0 }.count == 1)
            #expect(try await table.count("n = $1", 2) == 1)
            #expect(try await fixture.other.load(state.id).version == 3)
        }
    }

    /// A local write that breaks a constraint, or affects other than the rows it expects, stores
    /// nothing of the transition: not the saga's state, not its outbox message, not the earlier
    /// local writes. The error is `localWriteFailed` and names the statement.
    public static let aFailingLocalWriteStoresNothing = Check("aFailingLocalWriteStoresNothing") { fixture in
        try await withLocalTable(fixture) { table in
            let state = makeState()
            _ = try await fixture.store.create(state, outbox: [])
            try await table.apply([LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ('taken', 0)")])
            var next = state
            next.currentStep = 1
            let cases: [(String, LocalWrite)] = [
                ("a duplicate key", LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, 1)", "taken")),
                ("a NOT NULL column", LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, $2)", "nulled", nil)),
                ("no row", LocalWrite("UPDATE \(table.name) SET n = 5 WHERE id = $1", "absent", expecting: .atLeastOneRow)),
                ("too many rows", LocalWrite("UPDATE \(table.name) SET n = n", expecting: .rows(5))),
            ]
            for (what, failing) in cases {
                let error = await expectSagaError(.localWriteFailed) {
                    try await fixture.store.commit(
                        SagaTransition(
                            state: next, expectedVersion: 1, outbox: [makeMessage(sagaID: state.id)],
                            localWrites: [
                                LocalWrite("INSERT INTO \(table.name) (id, n) VALUES ($1, 9)", .text("before-\(what)")), failing,
                            ]))
                }
                #expect(error?.message.contains("local write 2 of 2") == true, "\(what): \(String(describing: error))")
                #expect(try await fixture.other.load(state.id).version == 1, "\(what)")
                #expect(try await table.count("n = 9") == 0, "\(what): the first write stayed")
            }
            #expect(
                try await fixture.other.pendingOutbox(createdBefore: .distantFuture, limit: 10).filter { $0.sagaID == state.id }.isEmpty)
            #expect(try await table.count("id = $1 AND n = 0", "taken") == 1)
        }
    }

    /// Every ``LocalValue`` binds as its SQL type and reads back equal, in any placeholder order
    /// and repeated; `$n` inside a string literal or a comment is text, not a placeholder.
    public static let localValuesAndPlaceholdersRoundTrip = Check("localValuesAndPlaceholdersRoundTrip") { fixture in
        try await withLocalTable(fixture) { table in
            let bytes: [UInt8] = [0, 1, 2, 255, 36, 49]
            try await table.apply([
                LocalWrite(
                    "INSERT INTO \(table.name) (id, n, d, s, b, x, note) VALUES ($2, $1, $3, $4, $5, $6, '$1 is ''text'' -- $9') -- $7",
                    .int(-9_007_199_254_740_993), "values", .double(2.5), .text("é ' $1 \u{1F600}"), .bool(true), .bytes(bytes),
                    expecting: .rows(1))
            ])
            #expect(
                try await table.count(
                    "id = $1 AND n = $2 AND d = $3 AND s = $4 AND b = $5 AND x = $6 AND note = '$1 is ''text'' -- $9' AND z IS NULL AND $1 = id",
                    "values", .int(-9_007_199_254_740_993), .double(2.5), .text("é ' $1 \u{1F600}"), .bool(true), .bytes(bytes)) == 1)
            try await table.apply([LocalWrite("UPDATE \(table.name) SET z = $1 WHERE id = $2", nil, "values", expecting: .rows(1))])
            #expect(try await table.count("id = $1 AND b = $2", "values", false) == 0)
        }
    }

    /// A table for one check, created and dropped through local writes, read through row-count
    /// expectations.
    struct LocalTable: Sendable {
        let name: String
        let fixture: StoreUnderTest
        /// The saga whose transitions carry the table's own writes.
        let keeper: SagaID

        /// Commits `writes` with a transition of the keeper saga.
        func apply(_ writes: [LocalWrite]) async throws {
            let state = try await fixture.store.load(keeper)
            try await fixture.store.commit(SagaTransition(state: state, expectedVersion: state.version, outbox: [], localWrites: writes))
        }

        /// How many rows match `predicate`, up to 5 (by trying each count as an expectation).
        func count(_ predicate: String, _ parameters: LocalValue...) async throws -> Int {
            for rows in 0...5 {
                do {
                    try await apply([
                        LocalWrite("UPDATE \(name) SET n = n WHERE \(predicate)", parameters: parameters, expecting: .rows(rows))
                    ])
                    return rows
                } catch let error as SagaError where error.code == .localWriteFailed && error.message.contains("affected") {
                    continue
                }
            }
            return 6
        }
    }

    /// Creates a table `sagakit_lw_<random>` (id text key, n integer not null, and columns of
    /// every type) with a local write, runs `body`, and drops it.
    static func withLocalTable(_ fixture: StoreUnderTest, _ body: (LocalTable) async throws -> Void) async throws {
        let keeper = makeState()
        _ = try await fixture.store.create(keeper, outbox: [])
        let table = LocalTable(
            name: "sagakit_lw_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16))",
            fixture: fixture, keeper: keeper.id)
        try await table.apply([
            LocalWrite(
                """
                CREATE TABLE \(table.name) (id TEXT PRIMARY KEY, n BIGINT NOT NULL, d DOUBLE PRECISION, s TEXT, b BOOLEAN,
                    x BYTEA, note TEXT, z TEXT)
                """)
        ])
        do {
            try await body(table)
        } catch {
            try? await table.apply([LocalWrite("DROP TABLE \(table.name)")])
            throw error
        }
        try await table.apply([LocalWrite("DROP TABLE \(table.name)")])
    }
}
