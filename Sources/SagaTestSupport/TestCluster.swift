import Foundation

/// The three-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh`, for tests that stop nodes.
public enum TestCluster {
    /// The first AMQP port; the nodes listen on it and the next two.
    public static let basePort = 5781

    /// Runs `scripts/rabbitmq-cluster.sh` with `arguments` (on a thread of its own: starting nodes
    /// takes a minute) and returns its output.
    /// - Throws: ``TestBrokerUnavailable`` when the script fails.
    @discardableResult
    public static func run(_ arguments: [String]) async throws -> String {
        var environment = ProcessInfo.processInfo.environment
        environment["AMQP_URL"] = nil
        environment["CLUSTER_BASE_PORT"] = String(basePort)
        var url = URL(fileURLWithPath: TestBroker.scriptPath)
        url.deleteLastPathComponent()
        let command = ["/bin/bash", url.appendingPathComponent("rabbitmq-cluster.sh").path] + arguments
        let env = environment.map { "\($0.key)=\($0.value)" }
        let (status, output) = await withCheckedContinuation { (done: CheckedContinuation<(Int32, String), Never>) in
            let thread = Thread { done.resume(returning: TestBroker.spawnAndWait(command, environment: env)) }
            thread.start()
        }
        guard status == 0 else {
            throw TestBrokerUnavailable(
                message: "scripts/rabbitmq-cluster.sh \(arguments.joined(separator: " ")) failed (exit \(status)): \(output)")
        }
        return output
    }

    /// The URL naming all three nodes.
    public static var url: String {
        "amqp://guest:guest@127.0.0.1:\(basePort),127.0.0.1:\(basePort + 1),127.0.0.1:\(basePort + 2)/%2F"
    }
}
