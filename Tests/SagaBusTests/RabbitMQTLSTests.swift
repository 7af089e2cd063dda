import Foundation
import SagaCore
import SagaRabbitMQ
import SagaTestSupport
import Testing

/// `amqps://` against a private broker whose only listener is TLS, with a CA and a server certificate generated
/// by the test (`scripts/rabbitmq-tls.sh certs`, openssl).
@Suite(
    "RabbitMQ over TLS (private broker)", .serialized, .enabled(if: TestBroker.shouldRunIntegrationTests),
    .timeLimit(.minutes(3)))
struct RabbitMQTLSTests {
    static let port = (Int(ProcessInfo.processInfo.environment["RABBITMQ_PORT"] ?? "") ?? 5672) + 27

    @Test("verified TLS works end to end; a wrong CA and a plaintext client are refused with clear errors")
    func tls() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-tls-\(UUID().uuidString)").path
        try await Self.script(["certs", directory])
        try await Self.script(["stop", String(Self.port)])  // one left over from an interrupted run has other certificates
        try await Self.script(["start", String(Self.port), directory])
        do {
            try await Self.checks(directory)
        } catch {
            try? await Self.script(["stop", String(Self.port)])
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        try await Self.script(["stop", String(Self.port)])
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func checks(_ directory: String) async throws {
        // librabbitmq matches the DNS names of the certificate (not its IP addresses): connect by name.
        let url = "amqps://guest:tls-secret-pw@localhost:\(port)/%2F?cacertfile=\(directory)/ca.pem"

        // Verified (the CA signed the broker's certificate, which names 127.0.0.1): publish and consume.
        var verified = try RabbitMQConfiguration(url: url.replacingOccurrences(of: "tls-secret-pw", with: "guest"))
        #expect(verified.tls?.verifyPeer == true)
        verified.connectionName = "SagaBusTests TLS"
        let bus = try await RabbitMQBus.connect(verified)
        let queue = "test.tls.\(UUID().uuidString.prefix(8).lowercased())"
        try await bus.declare(Topology(queues: [QueueSpec(name: queue)]))
        let inbox = Inbox(try await bus.consume(queue: queue, prefetch: 4))
        try await bus.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("over TLS".utf8), headers: ["n": .int32(1)]))
        let delivery = try await inbox.next()
        #expect(delivery.text == "over TLS")
        #expect(delivery.headers[field: "n"] == .int32(1))
        try await delivery.ack()
        try await bus.deleteQueue(queue)
        await bus.shutdown()

        // With a client certificate as well.
        var withClientCertificate = verified
        withClientCertificate.tls?.clientCertificateFile = "\(directory)/client.pem"
        withClientCertificate.tls?.clientKeyFile = "\(directory)/client.key"
        await RabbitMQBus(configuration: withClientCertificate).connectAndShutDown()

        // A CA that did not sign the broker's certificate: refused, saying why.
        var wrongCA = try RabbitMQConfiguration(url: url.replacingOccurrences(of: "/ca.pem", with: "/other-ca.pem"))
        wrongCA.connectTimeout = .seconds(5)
        let refused = await #expect(throws: BusError.self) { try await RabbitMQBus.connect(wrongCA) }
        #expect(refused?.code == .tlsVerificationFailed, "\(String(describing: refused))")
        #expect(refused?.message.contains("does not verify: not signed by the CA in") == true, "\(String(describing: refused))")
        #expect(refused?.message.contains("other-ca.pem") == true)
        #expect(refused?.description.contains("tls-secret-pw") == false)
        // A service's bus (no fail-fast start) gives up at once too: no retry mends a wrong CA.
        wrongCA.failFastOnStartup = false
        let service = RabbitMQBus(configuration: wrongCA)
        let started = ContinuousClock.now
        let ended = await #expect(throws: BusError.self) { try await service.run() }
        #expect(ended?.code == .tlsVerificationFailed, "\(String(describing: ended))")
        #expect(ContinuousClock.now - started < .seconds(10))

        // A plaintext client cannot reach the TLS port: it fails within the connect timeout, pointing at amqps.
        var plain = try RabbitMQConfiguration(url: "amqp://guest:tls-secret-pw@127.0.0.1:\(port)/%2F")
        plain.connectTimeout = .seconds(3)
        let plainStarted = ContinuousClock.now
        let plaintext = await #expect(throws: BusError.self) { try await RabbitMQBus.connect(plain) }
        #expect(ContinuousClock.now - plainStarted < .seconds(6))
        print("a plaintext client on the TLS port: \(plaintext.map { "\($0)" } ?? "no error")")
        #expect(plaintext?.code == .unreachable, "\(String(describing: plaintext))")
        #expect(plaintext?.description.contains("amqps://") == true, "\(String(describing: plaintext))")
        #expect(plaintext?.description.contains("tls-secret-pw") == false)
    }

    /// Runs scripts/rabbitmq-tls.sh and waits for the exit status it writes to a file (Foundation's `Process` may
    /// not report the exit of a script that leaves a daemon behind); throws with its output when it fails.
    static func script(_ arguments: [String], timeout: Duration = .seconds(150)) async throws {
        let path = URL(fileURLWithPath: TestBroker.scriptPath).deletingLastPathComponent().appendingPathComponent("rabbitmq-tls.sh").path
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("sagakit-tls-script-\(UUID().uuidString)").path
        let (log, status) = (base + ".log", base + ".status")
        defer { for file in [log, status] { try? FileManager.default.removeItem(atPath: file) } }
        let quoted = ([path] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", "\(quoted) >'\(log)' 2>&1 </dev/null; echo $? >'\(status)'"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while true {
            if let text = try? String(contentsOfFile: status, encoding: .utf8), text.hasSuffix("\n") {
                guard text.trimmingCharacters(in: .whitespacesAndNewlines) == "0" else {
                    let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                    throw TimeLimitExceeded(
                        limit: .zero, what: "rabbitmq-tls.sh \(arguments.joined(separator: " ")) failed: \(output)")
                }
                return
            }
            guard ContinuousClock.now < deadline else {
                throw TimeLimitExceeded(limit: timeout, what: "rabbitmq-tls.sh \(arguments.joined(separator: " "))")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}

extension RabbitMQBus {
    /// Connects (recording a test issue when that fails) and shuts down.
    fileprivate func connectAndShutDown() async {
        do {
            try await connect()
        } catch {
            Issue.record("connecting failed: \(error)")
        }
        await shutdown()
    }
}
