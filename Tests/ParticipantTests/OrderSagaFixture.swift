import Foundation
import Participant
import SagaTestSupport
import Synchronization
import Testing

let orderSaga = TestSagas.order
let orderDefinitions = TestSagas.registry

/// Small delay levels so that retries in tests wait one second.
let testTopology = SagaTopology(prefix: "test-\(UUID().uuidString.prefix(6))", delayLevels: [1])

/// What the fake services did, keyed by idempotency key so that effects apply once.
final class Ledger: Sendable {
    struct Entry: Sendable, Hashable {
        var command: String
        var sagaID: SagaID
    }
    private let state = Mutex<(effects: [String: Entry], calls: [Entry])>(([:], []))

    /// Records a handler call; applies its effect only once per idempotency key.
    func record(_ context: SagaContext) {
        let entry = Entry(command: context.command, sagaID: context.sagaID)
        state.withLock { state in
            state.calls.append(entry)
            if state.effects[context.idempotencyKey] == nil { state.effects[context.idempotencyKey] = entry }
        }
    }

    /// Effects applied for a saga, in no particular order.
    func effects(of sagaID: SagaID) -> Set<String> {
        state.withLock { Set($0.effects.values.filter { $0.sagaID == sagaID }.map(\.command)) }
    }

    /// How many effects were applied for a saga (every incarnation of its id).
    func effectCount(of sagaID: SagaID) -> Int {
        state.withLock { $0.effects.values.filter { $0.sagaID == sagaID }.count }
    }

    /// How many times a command's handler ran for a saga.
    func calls(_ command: String, of sagaID: SagaID) -> Int {
        state.withLock { $0.calls.filter { $0.command == command && $0.sagaID == sagaID }.count }
    }
}

/// Behaviour switches for the fake services, read from the payload.
struct OrderPayload: Codable {
    var orderId: String
    var amount: Double
    var declinePayment: Bool?
    var failShippingTimes: Int?
    var failRefundAlways: Bool?
}

/// The three services' handlers.
func orderHandlers(ledger: Ledger, failures: Failures = Failures()) -> [String: SagaHandlerRegistry] {
    var inventory = SagaHandlerRegistry()
    inventory.register("inventory.reserve") { context in
        ledger.record(context)
        try await context.completeStep(merging: ["reservationId": .string("r-\(context.sagaID)")])
    }
    inventory.register("inventory.release") { context in
        ledger.record(context)
        try await context.completeCompensation()
    }
    var payment = SagaHandlerRegistry()
    payment.register("payment.charge") { context in
        let order = try context.payload(as: OrderPayload.self)
        if order.declinePayment == true {
            try await context.failAndCompensate(reason: "card declined")
            return
        }
        ledger.record(context)
        try await context.completeStep(merging: ["chargeId": .string("c-\(order.orderId)")])
    }
    payment.register("payment.refund") { context in
        let order = try context.payload(as: OrderPayload.self)
        if order.failRefundAlways == true { throw TestFailure("refund service down") }
        ledger.record(context)
        try await context.completeCompensation()
    }
    var shipping = SagaHandlerRegistry()
    shipping.register("shipping.ship") { context in
        let order = try context.payload(as: OrderPayload.self)
        if failures.shouldFail(context, times: order.failShippingTimes ?? 0) { throw TestFailure("carrier unavailable") }
        ledger.record(context)
        try await context.completeStep(merging: ["trackingId": "t-1"])
    }
    return ["inventory": inventory, "payment": payment, "shipping": shipping]
}

/// Counts failures per saga so a handler can fail its first N attempts.
final class Failures: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    func shouldFail(_ context: SagaContext, times: Int) -> Bool {
        counts.withLock { counts in
            let key = context.idempotencyKey
            counts[key, default: 0] += 1
            return counts[key]! <= times
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs participants for `handlers` on `bus`/`store` while `body` runs, then cancels them.
func withParticipants<T: Sendable>(
    _ handlers: [String: SagaHandlerRegistry],
    bus: any MessageBus,
    store: any SagaStore,
    reaper: ReaperConfiguration? = nil,
    prefetch: Int = 16,
    maxConcurrentHandlers: Int = 64,
    instances: Int = 1,
    logger: Logger = quietTestLogger,
    waitUntilConsuming: Bool = false,
    body: @Sendable (SagaManager) async throws -> T
) async throws -> T {
    try await withParticipants(
        handlers, buses: [bus], starterBus: bus, store: store, topology: testTopology, reaper: reaper, prefetch: prefetch,
        maxConcurrentHandlers: maxConcurrentHandlers, instances: instances, logger: logger, waitUntilConsuming: waitUntilConsuming,
        body: body
    )
}

/// Runs participants for `handlers` (each instance on the next bus of `buses`, round robin) while
/// `body` runs with a manager on `starterBus`, then cancels them.
func withParticipants<T: Sendable>(
    _ handlers: [String: SagaHandlerRegistry],
    buses: [any MessageBus],
    starterBus: any MessageBus,
    store: any SagaStore,
    topology: SagaTopology,
    reaper: ReaperConfiguration? = nil,
    prefetch: Int = 16,
    maxConcurrentHandlers: Int = 64,
    instances: Int = 1,
    outboxGracePeriod: Duration = .milliseconds(500),
    logger: Logger = quietTestLogger,
    waitUntilConsuming: Bool = false,
    body: @Sendable (SagaManager) async throws -> T
) async throws -> T {
    // The participants' readiness, theirs alone (not the process's, which other tests share).
    let health = SagaHealth()
    let manager = SagaManager(definitions: orderDefinitions, bus: starterBus, store: store, topology: topology, logger: logger)
    try await manager.declareTopology()
    // Declare every service queue up front, so that no command published before a participant
    // has started is unroutable.
    for (service, registry) in handlers {
        try await starterBus.declare(topology.topology(forService: service, commands: registry.commands))
    }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        var next = 0
        for (service, registry) in handlers.sorted(by: { $0.key < $1.key }) {
            for _ in 0..<instances {
                var configuration = ParticipantConfiguration(
                    service: service, topology: topology, prefetch: prefetch, maxConcurrentHandlers: maxConcurrentHandlers,
                    outboxPollInterval: .milliseconds(200),
                    outboxGracePeriod: outboxGracePeriod, reaper: reaper
                )
                configuration.health = health
                let participant = SagaParticipant(
                    configuration: configuration, definitions: orderDefinitions, handlers: registry, bus: buses[next % buses.count],
                    store: store, logger: logger)
                next += 1
                group.addTask { try await participant.run() }
            }
        }
        if waitUntilConsuming {
            // Every participant consumes its queue (a loaded machine may take seconds to start them).
            let expected = handlers.count * instances
            for _ in 0..<600 {
                let report = health.report()
                if report.components.count == expected && report.isReady { break }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let result = try await body(manager)
        group.cancelAll()
        return result
    }
}

/// Tests log errors only (set SAGAKIT_TEST_LOG=debug to see everything).
let quietTestLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = ProcessInfo.processInfo.environment["SAGAKIT_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error
    return logger
}()
