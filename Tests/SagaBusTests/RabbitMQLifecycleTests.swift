import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Testing

/// The bus as a swift-service-lifecycle `Service`: no I/O in `init`, connecting in `run()`, calls made before the
/// connection is up wait for it (bounded).
@Suite("RabbitMQ lifecycle", .enabled(if: TestBroker.shouldRunIntegrationTests), .timeLimit(.minutes(2)))
struct RabbitMQLifecycleTests {
    private func configuration() throws -> RabbitMQConfiguration {
        var configuration = try RabbitMQConfiguration(url: TestBroker.url)
        configuration.connectTimeout = .seconds(3)
        configuration.shutdownTimeout = .seconds(5)
        configuration.connectionName = "SagaBusTests lifecycle"
        return configuration
    }

    @Test("a publish issued before run() starts succeeds once run() connects")
    func publishBeforeRun() async throws {
        let bus = RabbitMQBus(configuration: try configuration())
        let queue = "test.before-run.\(UUID().uuidString.prefix(8))"
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // Issued before run(): both wait for the connection.
                try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
                try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("early".utf8)))
            }
            try await Task.sleep(for: .milliseconds(300))
            group.addTask { try await bus.run() }
            try await withTimeout(.seconds(20)) {
                // Declared here too: this may run before the early declaration.
                try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
                let stream = try await bus.consume(queue: queue, prefetch: 1)
                for try await delivery in stream {
                    #expect(delivery.body == Array("early".utf8))
                    try await delivery.ack()
                    break
                }
            }
            try await bus.deleteQueue(queue)
            group.cancelAll()  // ends run(), which shuts the bus down
            try await group.waitForAll()
        }
        await #expect(throws: BusError.self) {
            try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: []))
        }
    }

    @Test("the connection threads carry names an operator can find in top -H, perf or a debugger")
    func connectionThreadsAreNamed() async throws {
        func threadNames() -> [String] {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.compactMap { task in
                (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
        let bus = try await RabbitMQBus.connect(try configuration())
        let names = threadNames()
        await bus.shutdown()
        // Without a name Linux accepts, both threads keep their creator's (a Swift pool thread's).
        #expect(names.contains("amqp-publisher"), "threads: \(names)")
        #expect(names.contains("amqp-consumer"), "threads: \(names)")
    }

    @Test("a broker that cannot be reached: calls fail after operationTimeout with what to check")
    func unreachableWhileRunning() async throws {
        var configuration = try configuration()
        configuration.endpoints = [.init(host: "127.0.0.1", port: 1)]
        configuration.operationTimeout = .seconds(1)
        configuration.reconnectDelayMin = .milliseconds(50)
        configuration.reconnectDelayMax = .milliseconds(200)
        let bus = RabbitMQBus(configuration: configuration)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await bus.run() }
            let start = ContinuousClock.now
            let error = await #expect(throws: BusError.self) {
                try await bus.publish(OutgoingMessage(exchange: "", routingKey: "nowhere", body: []))
            }
            let waited = ContinuousClock.now - start
            #expect(waited >= .seconds(1) && waited < .seconds(20), "waited \(waited)")
            #expect(error?.code == .unreachable)
            #expect(error?.description.contains("127.0.0.1:1") == true, "\(String(describing: error))")
            #expect(error?.description.contains("operationTimeout") == true)
            #expect(error?.description.contains(":\(configuration.password)@") == false)
            group.cancelAll()
            try await group.waitForAll()
        }
    }

    @Test("a bus nobody runs: calls fail after operationTimeout saying to run or connect it")
    func notRunning() async throws {
        var configuration = try configuration()
        configuration.operationTimeout = .milliseconds(300)
        let bus = RabbitMQBus(configuration: configuration)
        let error = await #expect(throws: BusError.self) {
            try await bus.declare(Topology(queues: [QueueSpec(name: "test.never")]))
        }
        #expect(error?.description.contains("not running") == true, "\(String(describing: error))")
        #expect(error?.description.contains("ServiceGroup") == true)
        #expect(error?.description.contains("connect()") == true)
        await bus.shutdown()
    }

    @Test("several endpoints: an unreachable first one is skipped; connect() is idempotent")
    func endpointRotation() async throws {
        var configuration = try configuration()
        configuration.endpoints.insert(.init(host: "127.0.0.1", port: 1), at: 0)
        let bus = RabbitMQBus(configuration: configuration)
        try await bus.connect()
        try await bus.connect()
        let queue = "test.endpoints.\(UUID().uuidString.prefix(8))"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: [1]))
        try await bus.deleteQueue(queue)
        await bus.shutdown()
    }

    @Test("fail fast: run() throws the connection error")
    func failFastRun() async throws {
        var configuration = try configuration()
        configuration.endpoints = [.init(host: "127.0.0.1", port: 1)]
        configuration.failFastOnStartup = true
        let bus = RabbitMQBus(configuration: configuration)
        let error = await #expect(throws: BusError.self) { try await bus.run() }
        #expect(error?.code == .unreachable)
    }

    @Test("a refused login: run() throws it at once without fail fast, and calls fail with it, not after a timeout")
    func refusedLoginEndsRun() async throws {
        var configuration = try configuration()
        configuration.password = "definitely-wrong"
        configuration.failFastOnStartup = false
        configuration.operationTimeout = .seconds(30)
        let bus = RabbitMQBus(configuration: configuration)
        let started = ContinuousClock.now
        let outcome = await withTaskGroup(of: BusError?.self) { group in
            group.addTask {
                do {
                    try await bus.run()
                    return nil
                } catch { return error as? BusError }
            }
            group.addTask {
                do {
                    try await bus.declare(Topology(queues: [QueueSpec(name: "never-declared")]))
                    return nil
                } catch { return error as? BusError }
            }
            var errors: [BusError?] = []
            for await error in group { errors.append(error) }
            return errors
        }
        #expect(outcome.count == 2 && outcome.allSatisfy { $0?.code == .authenticationFailed }, "\(outcome)")
        #expect(ContinuousClock.now - started < .seconds(10))
    }
}
