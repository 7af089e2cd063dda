import Foundation
public import Participant

/// Figures of a batch of sagas, computed from their stored states: outcome counts, throughput
/// (sagas from the first start to the last finish) and latency (start to finish of each saga).
public struct RunStatistics: Sendable, Codable {
    /// Sagas in the batch.
    public var count: Int
    /// Completed sagas.
    public var completed: Int
    /// Compensated sagas.
    public var compensated: Int
    /// Sagas that need attention.
    public var needsAttention: Int
    /// Sagas still running or compensating.
    public var unfinished: Int
    /// Seconds from the first start to the last finish.
    public var seconds: Double
    /// Finished sagas per second over ``seconds``.
    public var throughput: Double
    /// Median start-to-finish latency of finished sagas, in seconds.
    public var p50: Double
    /// 99th percentile latency, in seconds.
    public var p99: Double
    /// Longest latency, in seconds.
    public var max: Double

    /// Computes the figures.
    public init(states: [SagaState]) {
        count = states.count
        completed = states.count { $0.status == .completed }
        compensated = states.count { $0.status == .compensated }
        needsAttention = states.count { $0.status == .needsAttention }
        let finished = states.filter(\.status.isTerminal)
        unfinished = count - finished.count
        let latencies = finished.map { $0.updatedAt.timeIntervalSince($0.createdAt) }.sorted()
        if let first = states.map(\.createdAt).min(), let last = finished.map(\.updatedAt).max() {
            seconds = Swift.max(last.timeIntervalSince(first), 0.001)
        } else {
            seconds = 0
        }
        throughput = seconds > 0 ? Double(finished.count) / seconds : 0
        p50 = Self.percentile(latencies, 0.50)
        p99 = Self.percentile(latencies, 0.99)
        max = latencies.last ?? 0
    }

    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((p * Double(sorted.count)).rounded(.up)) - 1
        return sorted[Swift.min(Swift.max(rank, 0), sorted.count - 1)]
    }
}

/// Formats a duration in seconds for people: `850 µs`, `35 ms`, `1.24 s`, `2 min 5 s`.
public func formatSeconds(_ seconds: Double) -> String {
    switch seconds {
    case ..<0.001: String(format: "%.0f µs", seconds * 1_000_000)
    case ..<0.01: String(format: "%.1f ms", seconds * 1000)
    case ..<1: String(format: "%.0f ms", seconds * 1000)
    case ..<120: String(format: "%.2f s", seconds)
    default: "\(Int(seconds) / 60) min \(Int(seconds) % 60) s"
    }
}
