import Foundation
import InMemoryLogging
import SagaConsole
import SagaTestSupport
import ServiceLifecycle
import Testing

@testable import Participant

/// A participant records itself in the store while it runs (its service, its commands, every
/// `presenceInterval`) and removes its record when it stops gracefully; with `presenceInterval`
/// `nil` it records nothing.
@Suite("Participant presence", .timeLimit(.minutes(1)))
struct PresenceTests {
    @Test func aParticipantReportsItselfWhileItRunsAndLeavesOnAGracefulStop() async throws {
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "presence-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let runtime = SagaRuntime(definitions: orderDefinitions, bus: bus, store: store, topology: topology, logger: quietTestLogger)
        let handlers = orderHandlers(ledger: Ledger())
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        for (service, registry) in handlers.sorted(by: { $0.key < $1.key }) {
            try await bus.declare(topology.topology(forService: service, commands: registry.commands))
            var configuration = ParticipantConfiguration(service: service, topology: topology, reaper: nil)
            configuration.health = SagaHealth()
            // Payment reports every 100 ms; inventory records nothing; shipping keeps the default.
            configuration.presenceInterval = service == "payment" ? .milliseconds(100) : service == "inventory" ? nil : .seconds(15)
            services.append(.init(service: SagaParticipant(configuration: configuration, handlers: registry, runtime: runtime)))
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: quietTestLogger))
        // Test code: the group runs until the test shuts it down gracefully.
        let running = Task { try await group.run() }

        try await eventually("payment and shipping report in") {
            Set(try await store.participants().map(\.service)) == ["payment", "shipping"]
        }
        let payments = try #require(try await store.participants().first { $0.service == "payment" })
        #expect(payments.topology == topology.prefix)
        #expect(payments.commands == (handlers["payment"]?.commands ?? []).sorted())
        #expect(payments.reportInterval == .milliseconds(100))
        #expect(payments.instance.contains(":\(ProcessInfo.processInfo.processIdentifier):"), "\(payments.instance)")
        #expect(payments.isLive(at: Date()))
        try await eventually("payment reports again") {
            (try await store.participants().first { $0.service == "payment" }?.lastSeen ?? .distantPast) > payments.lastSeen
        }
        #expect(try await store.participants().first { $0.service == "payment" }?.startedAt == payments.startedAt)

        await group.triggerGracefulShutdown()
        try await running.value
        #expect(try await store.participants().isEmpty, "a graceful stop removes the records")
    }

    /// A process that lacks a handler its service's other live processes have says so at start
    /// (a release that lost a handler); one that adds a command says that too, at info.
    @Test func aProcessSaysWhenItHandlesOtherCommandsThanItsServicesOtherProcesses() async throws {
        let bus = InMemoryBus()
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "presence-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        let registry = try #require(orderHandlers(ledger: Ledger())["payment"])
        try await bus.declare(topology.topology(forService: "payment", commands: registry.commands))
        // The previous release's process still runs: it handles payment.authorize, which this
        // release dropped, and not the newest command.
        let newest = try #require(registry.commands.sorted().last)
        let previous = registry.commands.filter { $0 != newest } + ["payment.authorize"]
        try await store.recordParticipant(
            ParticipantInstance(
                topology: topology.prefix, service: "payment", instance: "old-host:1:a", commands: previous, startedAt: Date(),
                lastSeen: Date(), reportInterval: .seconds(15)))
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .info
            return handler
        }()
        var configuration = ParticipantConfiguration(service: "payment", topology: topology, reaper: nil)
        configuration.health = SagaHealth()
        let participant = SagaParticipant(
            configuration: configuration, definitions: orderDefinitions, handlers: registry, bus: bus, store: store,
            logger: Logger(label: "payment", factory: { _ in logs }))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await participant.run() }
            try await eventually("the new process compared itself") {
                logs.entries.contains { "\($0.message)".contains("handles commands its other live processes do not") }
            }
            group.cancelAll()
        }
        let warning = logs.entries.first { $0.level == .warning && "\($0.message)".contains("has no handler for") }
        let warningText = warning.map { "\($0.message)" } ?? ""
        #expect(
            warningText.hasPrefix(
                "other live processes of service 'payment' handle commands this one has no handler for: payment.authorize;"),
            "\(logs.entries)")
        let info = logs.entries.first { "\($0.message)".contains("handles commands its other live processes do not") }
        #expect(info?.level == .info && "\(info?.message ?? "")".contains(": \(newest) (a rolling upgrade"), "\(String(describing: info))")
    }

    private func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
        for _ in 0..<200 {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        Issue.record("timed out waiting until \(what)")
    }
}

/// Which stored definitions still need handlers (`saga services --check`, the console's
/// services page): an outside trial retired version 1 as Upgrades.md says, and `--check` kept
/// failing for its commands for good.
@Suite("Definitions in use")
struct DefinitionsInUseTests {
    @Test func aRetiredVersionNeedsNoHandlersAndOneWithUnfinishedSagasDoes() async throws {
        let v1 = try SagaBuilder("ticket").version(1)
            .step("reserve", action: "seats.reserve", compensation: "seats.release")
            .step("issue", action: "tickets.issue")
            .build()
        let v2 = try SagaBuilder("ticket").version(2)
            .step("reserve", action: "seats.reserve", compensation: "seats.release-v2")
            .step("issue", action: "tickets.issue")
            .build()
        let other = try SagaBuilder("refund").version(1).step("pay", action: "billing.refund").build()
        let store = InMemorySagaStore()
        func create(_ definition: SagaDefinition, _ id: String, status: SagaStatus) async throws {
            var (state, _) = SagaStateMachine(definition: definition).start(
                id: id, payload: [:], context: [SagaTopology.contextKey: "t", SagaState.definitionVersionKey: "\(definition.version)"],
                now: Date())
            state.status = status
            _ = try await store.create(state, outbox: [])
        }
        try await create(v1, "done-1", status: .completed)
        try await create(v1, "done-2", status: .compensated)
        try await create(v2, "new-1", status: .running)
        // Every v1 saga has ended: only v2 (and the other definition's newest) need handlers.
        var inUse = await ServiceDirectory.inUse([v1, v2, other], store: store, topology: "t")
        #expect(inUse.map { "\($0.name) v\($0.version)" } == ["refund v1", "ticket v2"])
        // A v1 saga that needs attention is unfinished: v1 needs its handlers again.
        try await create(v1, "stuck-1", status: .needsAttention)
        inUse = await ServiceDirectory.inUse([v1, v2, other], store: store, topology: "t")
        #expect(inUse.map { "\($0.name) v\($0.version)" } == ["refund v1", "ticket v1", "ticket v2"])
    }

    /// A participant says, a report interval after it started, which commands unfinished sagas
    /// need while no live process handles them (an outside trial's v3 dropped a command its v2
    /// sagas still sent, and nothing said so for ten minutes).
    @Test func aParticipantSaysWhichNeededCommandsNobodyHandles() async throws {
        let v1 = try SagaBuilder("ticket").version(1)
            .step("reserve", action: "seats.reserve", compensation: "seats.release")
            .step("check", action: "billing.fraud-check")
            .step("charge", action: "billing.charge")
            .build()
        let v2 = try SagaBuilder("ticket").version(2)
            .step("reserve", action: "seats.reserve", compensation: "seats.release")
            .step("charge", action: "billing.charge-and-check")
            .build()
        let store = InMemorySagaStore()
        let topology = SagaTopology(prefix: "needed-\(UUID().uuidString.prefix(6))", delayLevels: [1])
        try await store.register(v1)
        try await store.register(v2)
        for index in 0..<3 {
            let (state, _) = SagaStateMachine(definition: v1).start(
                id: "old-\(index)", payload: [:],
                context: [SagaTopology.contextKey: topology.prefix, SagaState.definitionVersionKey: "1"], now: Date())
            _ = try await store.create(state, outbox: [])
        }
        // The seats service runs (another process).
        try await store.recordParticipant(
            ParticipantInstance(
                topology: topology.prefix, service: "seats", instance: "seats-1", commands: ["seats.reserve", "seats.release"],
                startedAt: Date(), lastSeen: Date(), reportInterval: .seconds(15)))
        // Release 2's billing: no handler for v1's billing.fraud-check and billing.charge.
        var billing = SagaHandlerRegistry()
        billing.register("billing.charge-and-check") { try await $0.completeStep() }
        let logs = {
            var handler = InMemoryLogHandler()
            handler.logLevel = .info
            return handler
        }()
        var configuration = ParticipantConfiguration(service: "billing", topology: topology, reaper: nil)
        configuration.presenceInterval = .milliseconds(200)
        configuration.health = SagaHealth()
        let participant = SagaParticipant(
            configuration: configuration, definitions: try SagaDefinitionRegistry([v2]), handlers: billing, bus: InMemoryBus(),
            store: store, logger: Logger(label: "billing", factory: { _ in logs }))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await participant.run() }
            for _ in 0..<200 where !logs.entries.contains(where: { "\($0.message)".contains("that unfinished sagas still need") }) {
                try await Task.sleep(for: .milliseconds(25))
            }
            group.cancelAll()
        }
        let warning = logs.entries.first { "\($0.message)".contains("that unfinished sagas still need") }
        #expect(warning?.level == .warning, "\(logs.entries.map(\.message))")
        let text = warning.map { "\($0.message)" } ?? ""
        let expected =
            "2 command(s) that unfinished sagas still need have no live handler on topology '\(topology.prefix)': billing.charge (ticket v1: 3 unfinished sagas); billing.fraud-check (ticket v1: 3 unfinished sagas)."
        #expect(text.hasPrefix(expected), "\(text)")
        // Nothing to say once they are handled, or when no saga needs them.
        try await store.recordParticipant(
            ParticipantInstance(
                topology: topology.prefix, service: "billing", instance: "billing-old",
                commands: ["billing.fraud-check", "billing.charge"],
                startedAt: Date(), lastSeen: Date(), reportInterval: .seconds(15)))
        #expect(try await PresenceReporter.neededCommandsNobodyHandles(store: store, topology: topology.prefix, now: Date()).isEmpty)
    }
}
