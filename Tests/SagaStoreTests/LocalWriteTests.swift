import Foundation
import SagaCore
import SagaSQLite
import SagaTestSupport
import SagaTesting
import Testing

@testable import SagaPostgres

/// Local writes (`LocalWrite`): a handler's statements on the service's tables, committed in the
/// transaction of the saga's transition.
@Suite("Local writes", .timeLimit(.minutes(1)))
struct LocalWriteTests {
    static let sqlStores: [StoreKind] = [.sqlite, .postgres]

    @Test("SQL stores pass the local-write conformance checks", arguments: SagaStoreConformance.localWriteChecks, sqlStores)
    func sqlStorePassesLocalWriteCheck(_ check: SagaStoreConformance.Check, kind: StoreKind) async throws {
        if kind == .postgres, try await TestPostgres.url() == nil { return }
        try await check.run { body in
            try await withStore(kind) { fixture in
                #expect(fixture.store.supportsLocalWrites)
                try await body(fixture)
            }
        }
    }

    @Test func theInMemoryStoreRefusesLocalWritesAndStoresNothing() async throws {
        let store = InMemorySagaStore()
        #expect(!store.supportsLocalWrites)
        let state = Conformance.makeState()
        _ = try await store.create(state, outbox: [])
        let error = await Conformance.expectSagaError(.unsupported) {
            try await store.commit(
                SagaTransition(state: state, expectedVersion: 1, outbox: [], localWrites: [LocalWrite("UPDATE t SET n = 1")]))
        }
        #expect(error?.message.contains("InMemorySagaStore") == true)
        #expect(try await store.load(state.id).version == 1)
    }

    // MARK: Placeholders and validation

    @Test func placeholdersBecomeSQLiteNumberedParametersOutsideLiteralsAndComments() {
        let write = LocalWrite(
            #"UPDATE "t$1" SET s = '$1 it''s' || $2, n = $10 -- $3"# + "\n"
                + "/* $4 */ WHERE id = $1 AND x = $$ $5 $$ AND y = $tag$ $6 $tag$"
        )
        #expect(
            write.sqliteSQL
                == #"UPDATE "t$1" SET s = '$1 it''s' || ?2, n = ?10 -- $3"# + "\n"
                + "/* $4 */ WHERE id = ?1 AND x = $$ $5 $$ AND y = $tag$ $6 $tag$"
        )
    }

    @Test func validationRefusesTransactionControlAndMismatchedParameters() throws {
        for sql in ["COMMIT", "  begin immediate", "/* hidden */ ROLLBACK TO x", "savepoint a", "END"] {
            #expect(throws: SagaError.self, "\(sql)") { try LocalWrite(sql).validate(index: 0, of: 1) }
        }
        #expect(throws: SagaError.self) { try LocalWrite("UPDATE t SET a = $1, b = $2", 1).validate(index: 0, of: 1) }
        #expect(throws: SagaError.self) { try LocalWrite("UPDATE t SET a = 1", 1).validate(index: 0, of: 1) }
        try LocalWrite("UPDATE t SET a = $2, b = $1, c = $2", 1, 2).validate(index: 0, of: 1)
        try LocalWrite("INSERT INTO committed_orders (id) VALUES ($1)", "x").validate(index: 0, of: 1)
    }

    /// The scans are cached per statement: a statement checked again, and again after the cache
    /// filled up and started over, gets the same verdict.
    @Test func validationGivesTheSameVerdictWhenRepeatedAndAfterTheCacheStartsOver() throws {
        for round in 0..<3 {
            #expect(throws: SagaError.self, "\(round)") { try LocalWrite("COMMIT").validate(index: 0, of: 1) }
            #expect(throws: SagaError.self, "\(round)") { try LocalWrite("UPDATE t SET a = $1, b = $2", 1).validate(index: 0, of: 1) }
            try LocalWrite("UPDATE t SET a = $1, b = $2", 1, 2).validate(index: 0, of: 1)
            #expect(LocalWrite("UPDATE t SET a = $1 -- $2", 1).sqliteSQL == "UPDATE t SET a = ?1 -- $2")
            // More distinct statements than the cache keeps.
            for n in 1...300 { try LocalWrite("UPDATE t\(round)_\(n) SET a = $1", .int(Int64(n))).validate(index: 0, of: 1) }
        }
    }

    @Test func aWriteNeverPrintsItsParameters() {
        let write = LocalWrite("UPDATE cards SET number = $1", "4111-1111-1111-1111", expecting: .atLeastOneRow)
        #expect(!"\(write)".contains("4111"))
        do {
            try write.check(affectedRows: 0, index: 0, of: 1)
            Issue.record("no error")
        } catch {
            #expect(!"\(error)".contains("4111"))
            #expect("\(error)".contains("local write 1 of 1"))
            #expect("\(error)".contains("affected 0 rows, expected at least 1"))
        }
    }

    // MARK: Shared batches

    /// A write the database cannot run as a statement (it names a table that does not exist, or
    /// does not compile) is a deployment's mistake: `storeUnavailable`, redelivered until fixed,
    /// not the step's `localWriteFailed`; nothing of the transition is stored.
    @Test(arguments: sqlStores) func aStatementTheDatabaseCannotRunIsNotTheStepsFailure(kind: StoreKind) async throws {
        if kind == .postgres, try await TestPostgres.url() == nil { return }
        try await withStore(kind) { fixture in
            let state = Conformance.makeState()
            _ = try await fixture.store.create(state, outbox: [])
            var next = state
            next.currentStep = 1
            for write in [
                LocalWrite("INSERT INTO sagakit_missing_\(UUID().uuidString.prefix(8)) (id) VALUES ($1)", "x"),
                LocalWrite("UPDATE WHERE nothing"),
            ] {
                do {
                    try await fixture.store.commit(SagaTransition(state: next, expectedVersion: 1, outbox: [], localWrites: [write]))
                    Issue.record("stored with \(write.sql)")
                } catch let error as SagaError {
                    #expect(error.code == .storeUnavailable, "\(error)")
                    #expect(error.message.hasPrefix("local write 1 of 1 (\(write.sql.debugDescription)) failed: "), "\(error)")
                }
            }
            #expect(try await fixture.other.load(state.id).version == 1)
        }
    }

    /// With a schema of its own, the store says where a write's unqualified table was looked up:
    /// in the connection's search_path, not in the store's schema, where a qualified name finds it.
    @Test func aStoreWithASchemaSaysWhereUnqualifiedTablesAreLookedUp() async throws {
        try await withPostgresStore { fixture, store in
            let schema = store.namespace.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            let table = "effects_\(UUID().uuidString.prefix(8).lowercased())"
            try await store.executeForTesting("CREATE TABLE \(store.namespace).\(table) (id text PRIMARY KEY)")
            let state = Conformance.makeState()
            _ = try await fixture.store.create(state, outbox: [])
            var next = state
            next.currentStep = 1
            do {
                try await fixture.store.commit(
                    SagaTransition(
                        state: next, expectedVersion: 1, outbox: [],
                        localWrites: [LocalWrite("INSERT INTO \(table) (id) VALUES ($1)", .text(state.id))]))
                Issue.record("an unqualified table of the store's schema was found")
            } catch let error as SagaError {
                #expect(error.code == .storeUnavailable, "\(error)")
                #expect(error.message.contains("does not exist (SQLSTATE 42P01)"), "\(error)")
                #expect(
                    error.recoverySuggestion?.contains(
                        "not in the store's schema \(schema): qualify a table that lives there (\(schema).table)")
                        == true, "\(error)")
            }
            try await fixture.store.commit(
                SagaTransition(
                    state: next, expectedVersion: 1, outbox: [],
                    localWrites: [LocalWrite("INSERT INTO \(schema).\(table) (id) VALUES ($1)", .text(state.id), expecting: .rows(1))]))
        }
    }

    /// Transitions of many sagas committed at once share transactions; one saga's failing local
    /// write rolls back that saga only (a savepoint; PostgreSQL runs such a batch again with
    /// savepoints), the others commit with their writes.
    @Test(arguments: sqlStores) func aFailingLocalWriteInASharedBatchFailsOnlyItsSaga(kind: StoreKind) async throws {
        if kind == .postgres, try await TestPostgres.url() == nil { return }
        let table = "effects_\(UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))"
        try await withStore(kind) { fixture in
            let store = fixture.store
            let keeper = Conformance.makeState()
            _ = try await store.create(keeper, outbox: [])
            try await store.commit(
                SagaTransition(
                    state: keeper, expectedVersion: 1, outbox: [],
                    localWrites: [LocalWrite("CREATE TABLE \(table) (saga TEXT PRIMARY KEY)")]))
            let sagas = (0..<40).map { _ in Conformance.makeState() }
            for saga in sagas { _ = try await store.create(saga, outbox: []) }
            let results = await withTaskGroup(of: (Int, Bool).self) { group in
                for (index, saga) in sagas.enumerated() {
                    group.addTask {
                        var next = saga
                        next.currentStep = 1
                        // Every fifth saga writes its row twice: the second breaks the key.
                        let write = LocalWrite("INSERT INTO \(table) (saga) VALUES ($1)", .text(saga.id))
                        let committed =
                            (try? await store.commit(
                                SagaTransition(
                                    state: next, expectedVersion: 1, outbox: [Conformance.makeMessage(sagaID: saga.id)],
                                    localWrites: index % 5 == 0 ? [write, write] : [write]))) != nil
                        return (index, committed)
                    }
                }
                return await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
            }
            for (index, saga) in sagas.enumerated() {
                let failing = index % 5 == 0
                #expect(results[index] == !failing, "saga \(index)")
                #expect(try await fixture.other.load(saga.id).version == (failing ? 1 : 2), "saga \(index)")
            }
            let pending = try await fixture.other.pendingOutbox(createdBefore: .distantFuture, limit: 100)
            #expect(pending.count == 32)
            // The table holds the 32 winners' rows, none of a failed saga's first write.
            let failed = sagas.enumerated().filter { $0.offset % 5 == 0 }.map { LocalValue.text($0.element.id) }
            try await store.commit(
                SagaTransition(
                    state: try await store.load(keeper.id), expectedVersion: 2, outbox: [],
                    localWrites: failed.map { LocalWrite("DELETE FROM \(table) WHERE saga = $1", $0, expecting: .rows(0)) } + [
                        LocalWrite("DELETE FROM \(table)", expecting: .rows(32)), LocalWrite("DROP TABLE \(table)"),
                    ]))
        }
    }
}
