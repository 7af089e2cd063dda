public import Configuration
public import Logging
import Metrics
public import Prometheus
import SagaCore
import Synchronization

/// SagaKit's metrics for Prometheus: swift-prometheus as the process's swift-metrics backend and
/// an HTTP endpoint that serves it.
///
/// One line in a service's `main`, off unless `sagakit.metrics.port` is set:
///
/// ```swift
/// let app = try SagaApplication(service: "payment", definitions: [TripSaga.definition])
/// let metrics = try SagaPrometheus.bootstrap(reader: app.config, logger: app.logger)
/// try await app.runParticipant(handlers: handlers, store: store, services: metrics.map { [$0] } ?? [])
/// ```
///
/// | key | environment | default |
/// |---|---|---|
/// | `sagakit.metrics.port` | `SAGAKIT_METRICS_PORT` | absent: no endpoint, no backend |
/// | `sagakit.metrics.host` | `SAGAKIT_METRICS_HOST` | `127.0.0.1` |
///
/// The metric names and labels are listed in Docs/Operations.md ("Metrics and alerts"). Histogram
/// buckets: `saga_duration_seconds` 0.1 s to 10 min (the slow-execution alert looks at 60 s),
/// `saga_step_duration_seconds` 5 ms to 30 s, `saga_store_batch_duration_seconds` 1 ms to 30 s,
/// `saga_store_batch_size` 1 to 64 sagas.
public enum SagaPrometheus {
    /// The registry that ``bootstrap(reader:logger:)`` makes the metrics backend and that
    /// ``PrometheusMetricsService`` serves by default.
    public static let registry = PrometheusCollectorRegistry()

    private static let bootstrapped = Atomic<Bool>(false)

    /// Bootstraps swift-metrics with ``registry`` and returns the endpoint to run, when
    /// `sagakit.metrics.port` is set; does nothing and returns `nil` otherwise.
    ///
    /// swift-metrics takes one backend per process: call this once, before any metric is
    /// recorded, and do not bootstrap another backend. A second call returns a service for the
    /// same registry without bootstrapping again.
    ///
    /// - Parameters:
    ///   - reader: the process's configuration (the keys start with `sagakit.`), e.g.
    ///     `SagaApplication.config`, or that reader scoped to `sagakit` or `sagakit.metrics` (as a
    ///     store's reader is scoped to `sagakit.store`): either way the port is
    ///     `sagakit.metrics.port`.
    ///   - logger: where the endpoint logs its address.
    /// - Returns: the ``PrometheusMetricsService`` to add to the process's services, or `nil`
    ///   when metrics are off.
    /// - Throws: `invalidConfiguration` when the port is not a whole number from 0 to 65535, or
    ///   when the reader is scoped elsewhere (where `sagakit.metrics.port` cannot be read).
    public static func bootstrap(reader: ConfigReader, logger: Logger = Logger(label: "sagakit.metrics")) throws
        -> PrometheusMetricsService?
    {
        let keys = try keys(in: reader)
        guard reader.string(forKey: keys.port) != nil else { return nil }
        let port = try reader.sagaInt(keys.port, default: 0, in: 0...65535)
        let host = reader.string(forKey: keys.host) ?? "127.0.0.1"
        bootstrapMetrics()
        return PrometheusMetricsService(port: port, host: host, registry: registry, logger: logger)
    }

    /// The port's and host's keys relative to `reader`'s scope: the process's reader, or one
    /// scoped to `sagakit` or `sagakit.metrics`.
    static func keys(in reader: ConfigReader) throws -> (port: ConfigKey, host: ConfigKey) {
        let scope = reader.sagaFullKey(ConfigKey([])).components
        let path = ["sagakit", "metrics"]
        guard scope.count <= path.count, Array(path.prefix(scope.count)) == scope else {
            throw SagaError(
                .invalidConfiguration,
                "SagaPrometheus.bootstrap reads sagakit.metrics.port (SAGAKIT_METRICS_PORT), which a reader scoped to '\(scope.joined(separator: "."))' cannot see",
                recoverySuggestion: "pass the process's reader (SagaApplication.config), or one scoped to 'sagakit.metrics'")
        }
        let relative = Array(path.dropFirst(scope.count))
        return (ConfigKey(relative + ["port"]), ConfigKey(relative + ["host"]))
    }

    /// Makes ``registry`` the process's swift-metrics backend (once; later calls do nothing),
    /// with SagaKit's histogram buckets. ``bootstrap(reader:logger:)`` calls it; call it
    /// yourself to serve the registry some other way (for example from a web framework's route
    /// with `registry.emitToBuffer()`).
    public static func bootstrapMetrics() {
        guard bootstrapped.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return
        }
        MetricsSystem.bootstrap(makeFactory(registry: registry))
    }

    /// A swift-metrics factory for `registry` with SagaKit's histogram buckets (for a process
    /// that combines it with other backends, e.g. in a `MultiplexMetricsHandler`).
    public static func makeFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["saga_duration_seconds"] = [
            .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
            .seconds(300), .seconds(600),
        ]
        factory.durationHistogramBuckets["saga_step_duration_seconds"] = [
            .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1),
            .seconds(5), .seconds(10), .seconds(30),
        ]
        factory.durationHistogramBuckets["saga_store_batch_duration_seconds"] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5), .seconds(30),
        ]
        factory.valueHistogramBuckets["saga_store_batch_size"] = [1, 2, 4, 8, 16, 32, 64]
        return factory
    }
}
