import Foundation
import SagaTestSupport
import Testing

@testable import SagaPostgres

/// The `saga` tool's commands run a few statements and exit: its PostgreSQL store holds no
/// connections between them (a participant's store holds two, see `PostgresHeldConnectionTests`).
struct OperatorConnectionTests {
    /// Counts the sessions PostgreSQL opened on the test database around one `saga list`; runs
    /// with no other suite beside it (scripts/test.sh's second phase), or their sessions count too.
    @Test func aSagaCommandHoldsNoConnectionsOnPostgreSQL() async throws {
        guard let url = try await TestPostgres.url() else { return }
        var configuration = try PostgresSagaStore.Configuration(url: url)
        configuration.maximumConnections = 1
        configuration.heldConnections = 0
        let database = configuration.database
        try await PostgresSagaStore(configuration: configuration).withRunning { counter in
            // The first command may create the schema; the sessions are counted around the second.
            try await Self.saga(["list", "--store-url", url])
            let before = try await Self.settledSessions(counter, database)
            try await Self.saga(["list", "--store-url", url])
            let after = try await Self.settledSessions(counter, database)
            // One for the schema check at start, one for the queries; a participant's store
            // would add its two held connections (4 before the tool held none).
            #expect(after - before <= 2, "saga list opened \(after - before) sessions")
        }
    }

    /// The sessions ever opened on `database`, once the count has not changed for two seconds (a
    /// session is counted when its server process reports its statistics: at its end, or at the
    /// end of a transaction a second after its last report).
    static func settledSessions(_ admin: PostgresSagaStore, _ database: String) async throws -> Int {
        var last = -1
        var unchangedSince = ContinuousClock.now
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            let rows = try await admin.rows("sessions", "SELECT sessions FROM pg_stat_database WHERE datname = \(database)")
            let count = Int(try rows.first?["sessions"].decode(Int64.self) ?? 0)
            if count != last {
                last = count
                unchangedSince = ContinuousClock.now
            } else if ContinuousClock.now - unchangedSince >= .seconds(2) {
                return count
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw Failure("the session count of \(database) did not settle within 15 s")
    }

    /// Runs the `saga` product built next to the tests; throws unless it exits with 0.
    static func saga(_ arguments: [String]) async throws {
        let saga = try ProductProcess(
            "saga", arguments, environment: ["SAGAKIT_STORE_URL": nil, "SAGAKIT_PREFIX": nil, "SAGA_OPERATOR": nil])
        let status = try await saga.waitForExit(timeout: .seconds(60))
        guard status == 0 else {
            throw Failure("saga \(arguments.first ?? "") exited with \(status):\n\(saga.output)")
        }
    }
}

private struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
