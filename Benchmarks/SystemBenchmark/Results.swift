import Foundation

/// What one phase of sagas ended in.
struct PhaseOutcome: Sendable {
    /// Seconds from start to terminal event, per saga.
    var latencies: [Double] = []
    /// Indices of the sagas that completed.
    var completed: Set<Int> = []
    /// Indices of the sagas that compensated.
    var compensated: Set<Int> = []
    /// Indices of the sagas that ended otherwise (needs attention).
    var other: Set<Int> = []
}

/// The figures of one configuration (one C).
struct RunResult {
    let options: SystemBenchmark
    let settings: Settings
    let inFlight: Int
    let seconds: Double
    var latencies: [Double] = []
    var completed = 0
    var compensated = 0
    var other = 0
    var cores: [String: Double] = [:]
    var cpuMicrosecondsPerStep: [String: Double] = [:]
    var starterMicrosecondsPerSaga = 0.0
    var peakRSS: [String: Double?] = [:]
    var verify: [String: Bool] = [:]
    var load1 = 0.0

    init(options: SystemBenchmark, settings: Settings, inFlight: Int, seconds: Double) {
        self.options = options
        self.settings = settings
        self.inFlight = inFlight
        self.seconds = seconds
    }

    var rate: Double { Double(options.sagas) / seconds }

    /// The `p` quantile of the latencies, in milliseconds.
    func percentileMS(_ p: Double) -> Double {
        guard !latencies.isEmpty else { return 0 }
        return latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] * 1000
    }

    private func rss(_ role: String) -> Double { (peakRSS[role] ?? nil) ?? 0 }

    /// One line of the human-readable table.
    func tableLine() -> String {
        let cpu = ["inventory", "payment", "shipping"].map { String(format: "%.0f", cpuMicrosecondsPerStep[$0] ?? 0) }
        let memory = ["inventory", "payment", "shipping", "starter"].map { String(format: "%.1f", rss($0)) }
        return String(
            format: "%7d %9.1f %9.1f %9.1f  %6@   %26@   %15.0f   %@", inFlight, rate, percentileMS(0.5), percentileMS(0.99),
            (verify["ok"] == true ? "ok" : "FAIL") as NSString, cpu.joined(separator: "/") as NSString, starterMicrosecondsPerSaga,
            memory.joined(separator: "/") as NSString)
            + (verify["ok"] == true ? "" : "  \(verify.filter { !$0.value }.keys.sorted()) \(completed)/\(compensated)/\(other)")
    }

    /// One JSON line with the yardstick's fields (`lib/report.py` reads them).
    func jsonLine() -> String {
        func round(_ value: Double, _ places: Double = 100) -> Double { (value * places).rounded() / places }
        var participants = 0.0
        for role in ["inventory", "payment", "shipping"] { participants += cores[role] ?? 0 }
        var cpuCores: [String: Double] = [
            "broker": cores["broker"] ?? 0, "participants": round(participants), "driver": cores["driver"] ?? 0,
            "other": cores["other"] ?? 0, "machine_busy": cores["machine_busy"] ?? 0,
        ]
        if let postgres = cores["postgres"] { cpuCores["postgres"] = postgres }
        let object: [String: Any] = [
            "bench": options.label, "run": options.run, "M": options.sagas, "C": inFlight, "fail_pct": options.failPct,
            "sync_commit": options.syncCommit, "store": settings.store, "local_write": settings.local,
            "secs": round(seconds, 1000),
            "sagas_per_s": round(rate, 10),
            "latency_ms": [
                "n": latencies.count, "p50": round(percentileMS(0.5)), "p99": round(percentileMS(0.99)),
                "max": round(percentileMS(1.0)),
            ],
            "outcomes": ["completed": completed, "compensated": compensated, "other": other],
            "verify": verify, "cpu_cores": cpuCores,
            "cpu_cores_by_process": [
                "inventory": cores["inventory"] ?? 0, "payment": cores["payment"] ?? 0, "shipping": cores["shipping"] ?? 0,
            ],
            "cpu_us_per_step": cpuMicrosecondsPerStep.mapValues { round($0, 1) },
            "cpu_us_per_saga_starter": round(starterMicrosecondsPerSaga, 1),
            "peak_rss_mb": peakRSS.compactMapValues { $0.map { round($0, 10) } },
            "machine_busy": cores["machine_busy"] ?? 0, "load1": load1, "prefetch": settings.prefetch, "handlers": settings.handlers ?? 0,
            "events": options.events,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
