import Foundation
import GRDB
import Participant
import SagaTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite(
    "Crash recovery with participant processes",
    .enabled(if: IntegrationServers.available, "set AMQP_URL and POSTGRES_URL, or run `make test`"),
    .timeLimit(.minutes(4))
)
struct ParticipantFaultTests {
    @Test(arguments: StoreKind.allCases)
    func killedParticipantsRestartAndEverySagaFinishesExactlyOnce(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let topology = SagaTopology(prefix: "fault-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let effectsPath = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-effects-\(UUID().uuidString).db").path
        let environment = [
            "AMQP_URL": servers.amqp, "STORE_URL": storeURL, "EFFECTS_DB": effectsPath, "PREFIX": topology.prefix,
            "REAPER_MS": "1000", "HANDLER_DELAY_MS": "400",
        ]
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let manager = SagaManager(definitions: TestSagas.registry, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        for (service, commands) in TestSagas.commandsByService {
            try await bus.declare(topology.topology(forService: service, commands: commands))
        }

        // Two competing payment instances, one of each other service.
        var hosts = try ["inventory", "payment", "payment", "shipping"].map { try HostProcess(service: $0, environment: environment) }
        do {
            try await Self.waitUntilReporting(hosts.count, topology: topology, store: store)
            let count = 40
            let ids = try await withThrowingTaskGroup(of: SagaID.self) { group in
                for index in 0..<count {
                    group.addTask {
                        try await manager.start(
                            "order", payload: ["orderId": .string("f-\(index)"), "amount": 1, "declinePayment": .bool(index % 4 == 0)])
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            // As soon as sagas are reaching the payment step, kill one payment instance and the
            // shipping service (SIGKILL: wherever they are in a step), and restart them a moment later.
            try await waitUntil {
                for id in ids where try await store.load(id).currentStep >= 1 { return true }
                return false
            }
            await hosts[1].kill()
            await hosts[3].kill()
            var unfinished = 0
            for id in ids where !(try await store.load(id).status.isTerminal) { unfinished += 1 }
            // The kill really interrupted running sagas (otherwise this test proves nothing).
            try #require(unfinished > 0)
            try await Task.sleep(for: .milliseconds(500))
            hosts[1] = try HostProcess(service: "payment", environment: environment)
            hosts[3] = try HostProcess(service: "shipping", environment: environment)

            var finals: [SagaState] = []
            for id in ids {
                do {
                    finals.append(try await manager.outcome(of: id, timeout: .seconds(90)))
                } catch {
                    // A process that died by itself explains a saga that never ends.
                    for host in hosts where !host.isRunning {
                        Issue.record("the \(host.service) process ended by itself (\(host.exitDescription)); its standard error is above")
                    }
                    throw error
                }
            }
            for host in hosts { #expect(host.isRunning, "the \(host.service) process ended by itself (\(host.exitDescription))") }
            #expect(finals.filter { $0.status == .completed }.count == 30)
            #expect(finals.filter { $0.status == .compensated }.count == 10)

            // Every saga's effects, read from the services' own table, are exactly its outcome's.
            let effects = try DatabaseQueue(path: effectsPath)
            let rows = try effects.read { db in
                try Row.fetchAll(db, sql: "SELECT saga_id, command FROM effects")
            }
            var bySaga: [String: Set<String>] = [:]
            for row in rows { bySaga[row["saga_id"], default: []].insert(row["command"]) }
            for saga in finals {
                let expected: Set<String> =
                    saga.status == .completed
                    ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
                #expect(bySaga[saga.id] ?? [] == expected, "saga \(saga.id) (\(saga.status)) has effects \(bySaga[saga.id] ?? [])")
            }
            // Nothing left in flight. A saga can end before its last messages are marked sent (the
            // terminal event wakes `outcome(of:)`; marks are batched), and a message committed by a
            // killed process waits for an outbox relay's grace period (5 s): allow 15 s.
            var unsent = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10_000).filter { ids.contains($0.sagaID) }
            let deadline = ContinuousClock.now.advanced(by: .seconds(15))
            while !unsent.isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                unsent = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10_000).filter { ids.contains($0.sagaID) }
            }
            #expect(unsent.isEmpty, "outbox messages never sent: \(unsent.map(\.routingKey))")
        } catch {
            for host in hosts { await host.stop() }
            throw error
        }
        for host in hosts { await host.stop() }
        await bus.shutdown()
        await close()
    }

    /// In-process steps (`inProcessSteps`) and SIGKILL: two instances of a service that runs every
    /// step of the saga in process; one is killed in the middle of the flow and started again.
    /// Commands it had committed but not run are published by an outbox relay after the grace
    /// period and run by the other instance (or itself, restarted): every saga ends, each effect
    /// once, nothing left unsent.
    @Test(arguments: StoreKind.allCases)
    func inProcessStepsSurviveASIGKILL(store kind: StoreKind) async throws {
        let servers = try IntegrationServers.require()
        let storeURL = kind.url(postgres: servers.postgres)
        let (store, close) = try await openStore(storeURL)
        let topology = SagaTopology(prefix: "inproc-kill-\(UUID().uuidString.prefix(8))", delayLevels: [1])
        let effectsPath = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-effects-\(UUID().uuidString).db").path
        let environment = [
            "AMQP_URL": servers.amqp, "STORE_URL": storeURL, "EFFECTS_DB": effectsPath, "PREFIX": topology.prefix,
            "REAPER_MS": "1000", "HANDLER_DELAY_MS": "150", "IN_PROCESS_STEPS": "1",
        ]
        let bus = try await RabbitMQBus.connect(url: servers.amqp)
        let manager = SagaManager(definitions: TestSagas.registry, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        try await manager.declareTopology()
        try await bus.declare(topology.topology(forService: "all", commands: TestSagas.commandsByService.values.flatMap { $0 }))
        var hosts = try [HostProcess(service: "all", environment: environment), HostProcess(service: "all", environment: environment)]
        do {
            // Both consume before the sagas start: on a loaded machine the later one would find
            // the first one holding every saga, and the kill would interrupt nothing.
            try await Self.waitUntilReporting(hosts.count, topology: topology, store: store)
            let count = 24
            let ids = try await manager.start(
                "order",
                payloads: (0..<count).map { ["orderId": .string("k-\($0)"), "amount": 1, "declinePayment": .bool($0 % 4 == 0)] }
            ).map(\.id)
            try await waitUntil {
                for id in ids where try await store.load(id).currentStep >= 1 { return true }
                return false
            }
            await hosts[0].kill()
            var unfinished = 0
            for id in ids where !(try await store.load(id).status.isTerminal) { unfinished += 1 }
            try #require(unfinished > 0)
            try await Task.sleep(for: .milliseconds(500))
            hosts[0] = try HostProcess(service: "all", environment: environment)

            var finals: [SagaState] = []
            for id in ids { finals.append(try await manager.outcome(of: id, timeout: .seconds(90))) }
            #expect(finals.filter { $0.status == .completed }.count == count - count / 4)
            #expect(finals.filter { $0.status == .compensated }.count == count / 4)
            let effects = try DatabaseQueue(path: effectsPath)
            let rows = try effects.read { db in try Row.fetchAll(db, sql: "SELECT saga_id, command FROM effects") }
            var bySaga: [String: Set<String>] = [:]
            for row in rows { bySaga[row["saga_id"], default: []].insert(row["command"]) }
            for saga in finals {
                let expected: Set<String> =
                    saga.status == .completed
                    ? ["inventory.reserve", "payment.charge", "shipping.ship"] : ["inventory.reserve", "inventory.release"]
                #expect(bySaga[saga.id] ?? [] == expected, "saga \(saga.id) (\(saga.status)) has effects \(bySaga[saga.id] ?? [])")
            }
            var unsent = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10_000).filter { ids.contains($0.sagaID) }
            let deadline = ContinuousClock.now.advanced(by: .seconds(15))
            while !unsent.isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                unsent = try await store.pendingOutbox(createdBefore: .distantFuture, limit: 10_000).filter { ids.contains($0.sagaID) }
            }
            #expect(unsent.isEmpty, "outbox messages never sent: \(unsent.map(\.routingKey))")
        } catch {
            for host in hosts { await host.stop() }
            throw error
        }
        for host in hosts { await host.stop() }
        await bus.shutdown()
        await close()
    }

    /// Waits until `count` participant processes of `topology` have reported in to the store
    /// (their presence records: each does as it starts to consume), and a moment more for their
    /// consumers to subscribe.
    static func waitUntilReporting(_ count: Int, topology: SagaTopology, store: any SagaStore) async throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(60))
        while try await store.participants().filter({ $0.topology == topology.prefix }).count < count {
            if ContinuousClock.now > deadline { throw TestFailure("\(count) participant processes did not report in within 60 s") }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(300))
    }
}
