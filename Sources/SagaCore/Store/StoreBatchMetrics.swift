import Metrics

/// The metrics of a store's batches (group commit done by the application, see
/// ``WriteCoalescer``): how many sagas each batch held and how long it ran, by store and
/// operation. Batches that stay at one saga under load, or that take long, say that the store
/// is where sagas wait.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `saga_store_batch_size` | histogram (recorder) | `store`, `operation` |
/// | `saga_store_batch_duration_seconds` | histogram (timer) | `store`, `operation` |
///
/// Metrics are created per batch, so a store created before the process bootstraps its metrics
/// backend still reports to it.
package enum StoreBatchMetrics {
    /// The batch size metric's label.
    package static let sizeLabel = "saga_store_batch_size"
    /// The batch duration metric's label.
    package static let durationLabel = "saga_store_batch_duration_seconds"

    /// An observer for ``WriteCoalescer/init(maxBatch:maxConcurrentBatches:closedError:observe:execute:)``
    /// that records each batch of `operation` in `store` (`postgres`, `sqlite`).
    package static func observer(store: String, operation: String) -> @Sendable (Int, Duration) -> Void {
        let dimensions = [("store", store), ("operation", operation)]
        return { size, duration in
            Recorder(label: sizeLabel, dimensions: dimensions, aggregate: true).record(size)
            Timer(label: durationLabel, dimensions: dimensions, preferredDisplayUnit: .seconds)
                .recordNanoseconds(Int64(duration.seconds * 1e9))
        }
    }
}
