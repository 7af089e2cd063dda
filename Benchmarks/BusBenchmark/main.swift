// Publish-with-confirms and consume+ack throughput of the Swift RabbitMQ bus against a minimal C loop on
// librabbitmq, in one run against the same broker (AMQP_URL, or the local default).
//
//   swift run -c release BusBenchmark [--messages 50000] [--size 256] [--window 256] [--prefetch 256] [--rounds 2]
//
// Each round: C publishes N messages into its own durable queue, the Swift bus publishes N into another; then C
// consumes and acks its queue, the Swift bus consumes and acks the other. Messages are persistent and mandatory.
// The best round of each is reported (the broker's own variance is large on a small machine).

import CBusLoop
import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport

struct Options {
    var messages = 50_000
    var size = 256
    var window = 256
    var prefetch = 256
    var rounds = 2

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            guard let value = iterator.next().flatMap({ Int($0) }), value > 0 else {
                print("usage: BusBenchmark [--messages N] [--size BYTES] [--window N] [--prefetch N] [--rounds N]")
                exit(2)
            }
            switch flag {
            case "--messages": messages = value
            case "--size": size = value
            case "--window": window = value
            case "--prefetch": prefetch = value
            case "--rounds": rounds = value
            default:
                print("unknown option \(flag)")
                exit(2)
            }
        }
    }
}

struct Figures {
    var cPublish = 0.0
    var swiftPublish = 0.0
    var cConsume = 0.0
    var swiftConsume = 0.0
}

func rate(_ messages: Int, _ seconds: Double) -> Double { Double(messages) / max(seconds, 1e-9) }

func runC(_ configuration: RabbitMQConfiguration, _ body: (UnsafePointer<cbus_broker>) -> (Int32, cbus_result))
    throws -> Double
{
    let (status, result) = configuration.host.withCString { host in
        configuration.user.withCString { user in
            configuration.password.withCString { password in
                configuration.vhost.withCString { vhost in
                    var broker = cbus_broker(
                        host: host, port: Int32(configuration.port), user: user, password: password, vhost: vhost)
                    return body(&broker)
                }
            }
        }
    }
    guard status == 0 else {
        var error = result.error
        let text = withUnsafeBytes(of: &error) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        throw BusError(.protocolError, "C loop failed: \(text)")
    }
    return rate(result.messages, result.seconds)
}

func swiftPublish(_ bus: RabbitMQBus, queue: String, _ options: Options) async throws -> Double {
    let body = [UInt8](repeating: UInt8(ascii: "x"), count: options.size)
    let start = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for lane in 0..<options.window {
            group.addTask {
                for _ in stride(from: lane, to: options.messages, by: options.window) {
                    try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: body))
                }
            }
        }
        try await group.waitForAll()
    }
    return rate(options.messages, (ContinuousClock.now - start).seconds)
}

func swiftConsume(_ bus: RabbitMQBus, queue: String, _ options: Options) async throws -> Double {
    let start = ContinuousClock.now
    var received = 0
    for try await delivery in try await bus.consume(queue: queue, prefetch: options.prefetch) {
        try await delivery.ack()
        received += 1
        if received == options.messages { break }
    }
    return rate(received, (ContinuousClock.now - start).seconds)
}

extension Duration {
    var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }
}

func main() async throws {
    let options = Options(CommandLine.arguments)
    var configuration = try RabbitMQConfiguration(url: TestBroker.url)
    configuration.confirmWindow = options.window
    configuration.connectionName = "BusBenchmark"
    print(
        "BusBenchmark: \(options.messages) persistent messages of \(options.size) B, confirm window "
            + "\(options.window), prefetch \(options.prefetch), \(options.rounds) round(s), broker \(configuration.redactedURL)"
    )
    let bus = try await RabbitMQBus.connect(configuration)
    var best = Figures()
    for round in 1...options.rounds {
        let suffix = UUID().uuidString.prefix(8)
        let cQueue = "bench.c.\(suffix)"
        let swiftQueue = "bench.swift.\(suffix)"
        try await bus.declare(Topology(queues: [QueueSpec(name: cQueue), QueueSpec(name: swiftQueue)]))

        // Alternate who goes first, so that neither side always meets a broker warmed (or loaded) by the other.
        let cFirst = round % 2 == 1
        var cPublish = 0.0
        var swiftPublishRate = 0.0
        for side in cFirst ? ["C", "Swift"] : ["Swift", "C"] {
            if side == "C" {
                cPublish = try runC(configuration) { broker in
                    var result = cbus_result()
                    let status = cbus_publish(
                        broker, cQueue, options.messages, Int32(options.size), Int32(options.window), &result)
                    return (status, result)
                }
            } else {
                swiftPublishRate = try await swiftPublish(bus, queue: swiftQueue, options)
            }
        }
        var cConsume = 0.0
        var swiftConsumeRate = 0.0
        for side in cFirst ? ["C", "Swift"] : ["Swift", "C"] {
            if side == "C" {
                cConsume = try runC(configuration) { broker in
                    var result = cbus_result()
                    let status = cbus_consume(broker, cQueue, options.messages, Int32(options.prefetch), &result)
                    return (status, result)
                }
            } else {
                swiftConsumeRate = try await swiftConsume(bus, queue: swiftQueue, options)
            }
        }
        print(
            String(
                format: "round %d: publish C %8.0f msg/s  Swift %8.0f msg/s | consume+ack C %8.0f msg/s  Swift %8.0f msg/s",
                round, cPublish, swiftPublishRate, cConsume, swiftConsumeRate))
        best.cPublish = max(best.cPublish, cPublish)
        best.swiftPublish = max(best.swiftPublish, swiftPublishRate)
        best.cConsume = max(best.cConsume, cConsume)
        best.swiftConsume = max(best.swiftConsume, swiftConsumeRate)
        try await bus.deleteQueue(cQueue)
        try await bus.deleteQueue(swiftQueue)
    }
    await bus.shutdown()
    print("")
    let line = "C %8.0f msg/s, Swift %8.0f msg/s, ratio %.2f"
    print("publish with confirms: " + String(format: line, best.cPublish, best.swiftPublish, best.swiftPublish / best.cPublish))
    print("consume + ack:         " + String(format: line, best.cConsume, best.swiftConsume, best.swiftConsume / best.cConsume))
}

try await main()
