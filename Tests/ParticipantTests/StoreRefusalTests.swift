import Foundation
import GRDB
import Participant
import PostgresNIO
import SagaPostgres
import SagaSQLite
import SagaTestSupport
import Testing

/// A store that refuses one saga's transition (a trigger, as a constraint or an operator's
/// rule would), on the real broker with SQLite and PostgreSQL: the command is tried once more,
/// then dead-lettered with the store's message; the other sagas, batched with it, finish; the
/// refused saga is not lost, and finishes once the cause is removed and the dead letter
/// requeued. Before, such a command was redelivered every half second for ever.
@Suite(
    "A transition the store refuses, on RabbitMQ with SQLite and PostgreSQL",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(3))
)
struct StoreRefusalTests {
    @Test(arguments: StoreKind.allCases)
    func aRefusedTransitionIsDeadLetteredAndTheOthersFinish(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let schema = "refusal_\(UUID().uuidString.prefix(8).lowercased())"
        let url = kind == .postgres ? servers.postgres + "?schema=\(schema)" : kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(url)
        _ = try await store.countByStatus(name: nil)  // waits until the store runs
        let trigger = RefusingTrigger(store: store, schema: schema)
        try await trigger.install()

        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let topology = SagaTopology(prefix: "refuse-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let ledger = Ledger()
        let (finished, letter, refusedID) = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            // Ten sagas at once, so that the refused one shares the store's batches with others;
            // every third one is declined (its compensation runs), and so is the refused one:
            // the trigger refuses its move to compensating.
            let refusedID = try await manager.start("order", payload: ["orderId": "refuse-1", "amount": 5, "declinePayment": true])
            let finished = try await withThrowingTaskGroup(of: SagaState.self) { group in
                for index in 0..<9 {
                    group.addTask {
                        let id = try await manager.start(
                            "order", payload: ["orderId": .string("ok-\(index)"), "amount": 5, "declinePayment": .bool(index % 3 == 0)])
                        return try await manager.outcome(of: id, timeout: .seconds(60))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let letter = try await Self.firstDelivery(on: bus, queue: topology.deadLetterQueue)
            return (finished, letter, refusedID)
        }
        #expect(finished.filter { $0.status == .completed }.count == 6)
        #expect(finished.filter { $0.status == .compensated }.count == 3)

        // The dead letter says what the store said, and which command it was.
        let reason = DeadLetters.reason(of: letter) ?? ""
        #expect(reason.contains("the store refused this command's change twice"), "\(reason)")
        #expect(reason.contains("test trigger refuses"), "\(reason)")
        #expect(letter.headers[SagaHeaders.deadLetterService] == "payment")
        #expect(letter.headers[SagaHeaders.deadLetterRoutingKey] == "payment.charge")

        // The saga is where it was: at the charge, its reservation recorded.
        let stalled = try await store.load(refusedID)
        #expect(stalled.status == .running && stalled.currentStep == 1, "\(stalled.status) at \(stalled.currentStep)")

        // The operator removes the cause and requeues the dead letter: the saga finishes.
        try await trigger.remove()
        let final = try await withParticipants(
            orderHandlers(ledger: ledger), buses: [bus], starterBus: bus, store: store, topology: topology
        ) { manager in
            try await bus.publish(DeadLetters.original(of: letter, topology: topology))
            return try await manager.outcome(of: refusedID, timeout: .seconds(60))
        }
        #expect(final.status == .compensated)
        #expect(final.failureReason == "step 'charge-card' failed: card declined")
        #expect(ledger.effects(of: refusedID) == ["inventory.reserve", "inventory.release"])

        await bus.shutdown()
        try await trigger.dropSchema()
        await close()
    }

    /// The first message on `queue` (acknowledged).
    private static func firstDelivery(on bus: RabbitMQBus, queue: String) async throws -> Delivery {
        for try await delivery in try await bus.consume(queue: queue, prefetch: 1) {
            try await delivery.ack()
            return delivery
        }
        throw TestFailure("the consumer of \(queue) ended")
    }
}

/// A trigger on the store's `sagas` table that refuses to move a saga whose order id starts
/// with `refuse-` to compensating: SQLSTATE 23514 in PostgreSQL, a constraint error in SQLite.
private struct RefusingTrigger: Sendable {
    let store: any SagaStore
    let schema: String

    func install() async throws {
        if store is PostgresSagaStore {
            try await execute(
                """
                CREATE FUNCTION \(schema).refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.status = 'compensating' AND NEW.payload->>'orderId' LIKE 'refuse-%' THEN
                        RAISE EXCEPTION 'test trigger refuses saga %', NEW.id USING ERRCODE = 'check_violation';
                    END IF;
                    RETURN NEW;
                END $$
                """)
            try await execute(
                "CREATE TRIGGER refuse_marked BEFORE UPDATE ON \(schema).sagas FOR EACH ROW EXECUTE FUNCTION \(schema).refuse_marked()")
        } else {
            try await execute(
                """
                CREATE TRIGGER refuse_marked BEFORE UPDATE ON sagas
                WHEN NEW.status = 'compensating' AND json_extract(NEW.payload, '$.orderId') LIKE 'refuse-%'
                BEGIN SELECT RAISE(ABORT, 'test trigger refuses the saga'); END
                """)
        }
    }

    func remove() async throws {
        try await execute(store is PostgresSagaStore ? "DROP TRIGGER refuse_marked ON \(schema).sagas" : "DROP TRIGGER refuse_marked")
    }

    func dropSchema() async throws {
        if store is PostgresSagaStore { try await execute("DROP SCHEMA \(schema) CASCADE") }
    }

    private func execute(_ sql: String) async throws {
        if let postgres = store as? PostgresSagaStore {
            _ = try await postgres.client.query(PostgresQuery(unsafeSQL: sql)).collect()
        } else if let sqlite = store as? SQLiteSagaStore {
            var configuration = GRDB.Configuration()
            configuration.busyMode = .timeout(10)
            try await DatabaseQueue(path: sqlite.path, configuration: configuration).write { db in try db.execute(sql: sql) }
        }
    }
}
