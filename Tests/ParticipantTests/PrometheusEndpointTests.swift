import Foundation
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The Prometheus endpoint end to end, as an operator sees it: the example order system's four
/// services run as processes on the real broker, each with `--metrics-port 0` (SagaPrometheus
/// bootstraps swift-prometheus and serves `/metrics`); a batch of orders runs, some declined and
/// compensated, half of them large (they wait for order-service's fraud desk to approve them);
/// then every endpoint is scraped over HTTP and the figures must add up across the processes, with
/// the design document's names and no saga id anywhere.
///
/// The endpoint runs in child processes because swift-metrics takes one backend per process and
/// the test process has its own (`TestMetricsBackend`).
@Suite(
    "Prometheus endpoint", .serialized, .timeLimit(.minutes(5)),
    .enabled(if: TestBroker.shouldRunIntegrationTests)
)
struct PrometheusEndpointTests {
    /// One sample of the text exposition format.
    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    static let designNames = [
        "saga_started_total", "saga_completed_total", "saga_failed_total", "saga_compensated_total", "saga_duration_seconds",
        "saga_step_duration_seconds", "saga_in_progress", "saga_compensation_retries_total",
    ]
    static let boundedLabels: Set<String> = [
        "saga", "step", "phase", "service", "outcome", "status", "le", "store", "operation", "source", "waited", "connection",
    ]

    @Test func aBatchOfSagasAddsUpAcrossTheServicesEndpoints() async throws {
        let amqpURL = try #require(try TestBroker.availableURL())
        let directory = NSTemporaryDirectory() + "sagakit-prometheus-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Order ids (the saga ids) are "<run>-00000" …: searched for in every scrape below.
        let run = "pm\(UUID().uuidString.prefix(6).lowercased())"
        let count = 24
        let environment: [String: String?] = [
            "AMQP_URL": amqpURL, "SAGAKIT_STORE_URL": "sqlite://\(directory)/sagas.db", "SAGAKIT_DATA_DIR": directory,
            "SAGAKIT_PREFIX": "prom-\(run)", "SAGAKIT_LOG_LEVEL": "info", "SAGAKIT_METRICS_PORT": nil, "NO_COLOR": "1",
        ]
        var processes: [ProductProcess] = []
        defer { for process in processes where process.process.isRunning { process.process.terminate() } }

        // The participants first (their queues must exist before the first command).
        var ports: [String: Int] = [:]
        for (service, extra) in [
            ("inventory-service", [String]()), ("payment-service", ["--decline-rate", "0.5"]),
            ("shipping-service", ["--failure-rate", "0"]),
        ] {
            let process = try ProductProcess(service, ["--metrics-port", "0"] + extra, environment: environment)
            processes.append(process)
            ports[service] = try await boundPort(of: process, name: service)
            #expect(
                try await process.waitForOutput(containing: "participant started", timeout: .seconds(60)),
                "\(service) did not start: \(process.output)")
        }
        let order = try ProductProcess(
            "order-service",
            [
                "--count", "\(count)", "--concurrency", "8", "--run-id", run, "--metrics-port", "0", "--keep-running", "--timeout", "120",
                "--large-order-rate", "0.5",
            ],
            environment: environment)
        processes.append(order)
        ports["order-service"] = try await boundPort(of: order, name: "order-service")
        try #require(
            try await order.waitForOutput(containing: "batch done", timeout: .seconds(150)),
            "the batch did not finish: \(order.output)")

        var scrapes: [String: String] = [:]
        for (service, port) in ports {
            let (status, body) = try await get("http://127.0.0.1:\(port)/metrics")
            #expect(status == 200, "\(service): GET /metrics answered \(status)")
            scrapes[service] = body
            // The same endpoint answers the orchestrator's probes: every service ready, its
            // broker connections up, each participant consuming its queue.
            let (ready, health) = try await get("http://127.0.0.1:\(port)/health/ready")
            #expect(
                ready == 200 && health.contains(#""status":"ready""#) && health.contains("broker connection (publisher)"),
                "\(service): \(health)")
            if service != "order-service" {
                #expect(
                    health.contains("consuming queue 'prom-\(run).\(service.replacing("-service", with: ""))'"), "\(service): \(health)")
            }
            #expect(try await get("http://127.0.0.1:\(port)/health/live").0 == 200)
        }
        let samples = scrapes.values.flatMap(Self.parse)
        func total(_ name: String, _ labels: [String: String] = [:]) -> Double {
            samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
                .reduce(0) { $0 + $1.value }
        }

        // The design document's names, each with the definition's name as a label.
        let names = Set(samples.map(\.name))
        for name in Self.designNames {
            #expect(
                names.contains(name) || names.contains(name + "_bucket"), "\(name) is missing from every endpoint: \(names.sorted())")
        }
        // (A participant's per-service counters carry its service instead, from its start, at zero.)
        #expect(
            samples.allSatisfy {
                $0.name.hasPrefix("saga_") && !$0.name.hasPrefix("saga_store_")
                    ? $0.labels["saga"] == "order"
                        || ($0.labels["saga"] == nil && ($0.labels["service"] != nil || $0.labels["connection"] != nil))
                    : true
            })
        for service in ["inventory", "payment", "shipping"] {
            #expect(samples.contains { $0.name == "saga_handed_back_total" && $0.labels["service"] == service })
        }
        // Every service says its connections to the broker are up (the SagaBrokerUnreachable alert).
        let connected = samples.filter { $0.name == "saga_broker_connected" }
        #expect(connected.count >= 6 && connected.allSatisfy { $0.value == 1 }, "\(connected)")
        // The stores' batches, by store and operation (bounded sets of values).
        let batches = samples.filter { $0.name.hasPrefix("saga_store_batch_") }
        #expect(names.contains("saga_store_batch_size_bucket") && names.contains("saga_store_batch_duration_seconds_bucket"))
        #expect(batches.allSatisfy { ["postgres", "sqlite"].contains($0.labels["store"] ?? "") })
        #expect(
            batches.allSatisfy { ["commit", "commit_with_writes", "load", "create", "mark_sent"].contains($0.labels["operation"] ?? "") })
        #expect(total("saga_store_batch_size_count", ["operation": "create"]) > 0)

        // The figures add up across the processes.
        let started = total("saga_started_total")
        let completed = total("saga_completed_total")
        let compensated = total("saga_compensated_total")
        #expect(started == Double(count))
        #expect(completed + compensated == started, "completed \(completed) + compensated \(compensated) ≠ started \(started)")
        #expect(compensated > 0, "a 50 % decline rate over \(count) orders compensated none")
        #expect(total("saga_needs_attention_total") == 0)
        // The large orders that waited for the fraud desk (order-service's summary line).
        let summary = try #require(order.output.firstMatch(of: /fraud review: (\d+) large order/), "\(order.output.suffix(2000))")
        let waited = Int(summary.1) ?? 0
        // Reaching the wait is no failure: every failed saga was compensated (\(waited) waited).
        #expect(total("saga_failed_total") == compensated, "\(waited) order(s) waited")
        // A declined card fails the parallel group 'prepare' (reserve-stock ‖ charge-card) at the
        // member that failed; a rejected or timed-out review fails at fraud-review.
        #expect(
            total("saga_failed_total", ["step": "charge-card"]) + total("saga_failed_total", ["step": "reserve-stock"])
                + total("saga_failed_total", ["step": "fraud-review"]) == compensated)
        #expect(total("saga_compensation_retries_total") == 0)
        // Every delivered command found its saga somewhere (its copy, or the store).
        #expect(total("saga_command_state_total") >= total("saga_step_duration_seconds_count"))
        #expect(total("saga_in_progress") == 0, "sagas in progress, summed over processes, after the batch")
        #expect(total("saga_compensations_pending") == 0)
        #expect(total("saga_duration_seconds_count") == started)
        #expect(total("saga_duration_seconds_count", ["outcome": "compensated"]) == compensated)
        #expect(total("saga_step_duration_seconds_count", ["step": "reserve-stock", "phase": "action"]) == started)
        #expect(total("saga_step_duration_seconds_count", ["step": "charge-card", "phase": "action"]) == started)
        #expect(total("saga_step_duration_seconds_count", ["step": "ship", "phase": "action"]) == completed)
        #expect(total("saga_step_duration_seconds_count", ["step": "reserve-stock", "phase": "compensation"]) == compensated)
        // `+Inf` holds every observation; the sum of seconds is positive.
        #expect(total("saga_duration_seconds_bucket", ["le": "+Inf"]) == started)
        #expect(total("saga_duration_seconds_sum") > 0)

        // Bounded labels only: no saga id, in a label or anywhere else.
        let labels = Set(samples.flatMap(\.labels.keys))
        #expect(labels.isSubset(of: Self.boundedLabels), "unexpected labels: \(labels.subtracting(Self.boundedLabels))")
        for (service, body) in scrapes {
            #expect(!body.contains(run), "\(service)'s metrics contain a saga id")
        }

        // Anything but /metrics is not found.
        let (status, _) = try await get("http://127.0.0.1:\(ports["payment-service"]!)/")
        #expect(status == 404)

        // SIGTERM ends every service gracefully.
        for process in processes {
            process.process.terminate()
            #expect(try await process.waitForExit(timeout: .seconds(30)) == 0, "\(process.output.suffix(2000))")
        }
    }

    /// The port a service's endpoint bound (`--metrics-port 0`), from its log line.
    func boundPort(of process: ProductProcess, name: String) async throws -> Int {
        let marker = "serving Prometheus metrics on http://127.0.0.1:"
        try #require(try await process.waitForOutput(containing: marker, timeout: .seconds(60)), "\(name): \(process.output)")
        let output = process.output
        let rest = output[try #require(output.range(of: marker)).upperBound...]
        return try #require(Int(rest.prefix(while: \.isNumber)))
    }

    /// GET over HTTP; the status and the body.
    func get(_ url: String) async throws -> (Int, String) {
        let (data, response) = try await URLSession.shared.data(from: try #require(URL(string: url)))
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// The samples of a text exposition (`name{label="value",…} value`); comments skipped.
    static func parse(_ text: String) -> [Sample] {
        text.split(separator: "\n").compactMap { line -> Sample? in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...])
            else { return nil }
            let series = line[..<space]
            guard let brace = series.firstIndex(of: "{") else { return Sample(name: String(series), labels: [:], value: value) }
            var labels: [String: String] = [:]
            for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { continue }
                labels[String(parts[0])] = String(parts[1].dropFirst().dropLast())
            }
            return Sample(name: String(series[..<brace]), labels: labels, value: value)
        }
    }
}
