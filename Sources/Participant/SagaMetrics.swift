import CoreMetrics
import Foundation
import Synchronization

/// SagaKit's metrics, with the reference names. Dimensions are bounded: the saga definition's
/// name, the step name, the phase, the service — never a saga id.
///
/// - `saga_started_total{saga}`
/// - `saga_completed_total{saga}`
/// - `saga_failed_total{saga}`: sagas whose forward path failed (compensation started, or the
///   saga needs attention)
/// - `saga_compensated_total{saga}`
/// - `saga_needs_attention_total{saga}`
/// - `saga_duration_seconds{saga,outcome}`: start to terminal state
/// - `saga_step_duration_seconds{saga,step,phase}`: handler run time
/// - `saga_in_progress{saga}`: started minus finished (sum it over processes)
/// - `saga_compensation_retries_total{saga}`
/// - `saga_stale_messages_total{service}`: duplicate or out-of-date commands acknowledged and
///   ignored
/// - `saga_dead_letters_total{service}`
/// - `saga_reaped_total{saga}`: stalled sagas whose command the reaper re-sent
struct SagaMetrics: Sendable {
    func started(_ saga: String) {
        Counter(label: "saga_started_total", dimensions: [("saga", saga)]).increment()
        Meter(label: "saga_in_progress", dimensions: [("saga", saga)]).increment()
    }

    /// Records what a committed transition changed.
    func transition(from old: SagaState, to new: SagaState) {
        let saga = new.name
        if old.status == .running, new.status != .running, new.status != .completed {
            Counter(label: "saga_failed_total", dimensions: [("saga", saga)]).increment()
        }
        if new.status == .compensating, old.status == .compensating, new.attempt > old.attempt {
            Counter(label: "saga_compensation_retries_total", dimensions: [("saga", saga)]).increment()
        }
        if new.reapAttempts > old.reapAttempts {
            Counter(label: "saga_reaped_total", dimensions: [("saga", saga)]).increment()
        }
        guard new.status.isTerminal, !old.status.isTerminal else { return }
        switch new.status {
        case .completed: Counter(label: "saga_completed_total", dimensions: [("saga", saga)]).increment()
        case .compensated: Counter(label: "saga_compensated_total", dimensions: [("saga", saga)]).increment()
        case .needsAttention: Counter(label: "saga_needs_attention_total", dimensions: [("saga", saga)]).increment()
        case .running, .compensating: break
        }
        Meter(label: "saga_in_progress", dimensions: [("saga", saga)]).decrement()
        let seconds = max(0, new.updatedAt.timeIntervalSince(new.createdAt))
        Timer(
            label: "saga_duration_seconds", dimensions: [("saga", saga), ("outcome", new.status.rawValue)], preferredDisplayUnit: .seconds
        )
        .recordNanoseconds(Int64(seconds * 1e9))
    }

    func stepDuration(saga: String, step: String, phase: StepPhase, duration: Duration) {
        Timer(
            label: "saga_step_duration_seconds", dimensions: [("saga", saga), ("step", step), ("phase", phase.rawValue)],
            preferredDisplayUnit: .seconds
        )
        .recordNanoseconds(Int64(duration.seconds * 1e9))
    }

    func stale(service: String) {
        Counter(label: "saga_stale_messages_total", dimensions: [("service", service)]).increment()
    }

    func deadLettered(service: String) {
        Counter(label: "saga_dead_letters_total", dimensions: [("service", service)]).increment()
    }
}
