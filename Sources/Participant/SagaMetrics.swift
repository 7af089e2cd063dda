import CoreMetrics
import Foundation
import Synchronization

/// SagaKit's metrics, with the names of the saga design document. Dimensions are bounded: the
/// saga definition's name (`saga`), the step name, the phase, the service, the outcome, the
/// status — never a saga id.
///
/// - `saga_started_total{saga}`
/// - `saga_completed_total{saga}`
/// - `saga_failed_total{saga,step}`: sagas whose forward path failed (compensation started, or
///   the saga needs attention); `step` is the step it stopped at
/// - `saga_compensated_total{saga}`
/// - `saga_needs_attention_total{saga}`
/// - `saga_duration_seconds{saga,outcome,waited}`: start to terminal state; `waited` is `true`
///   when the saga waited for a signal (a human's approval takes what it takes) (`completed`,
///   `compensated`, `needsAttention`)
/// - `saga_step_duration_seconds{saga,step,phase}`: handler run time
/// - `saga_in_progress{saga}`: started minus finished (per process: sum it over processes)
/// - `saga_compensations_pending{saga}`: sagas entering compensation minus those leaving it (per
///   process: sum it over processes)
/// - `saga_compensation_retries_total{saga,step}`
/// - `saga_stale_messages_total{service}`: duplicate or out-of-date commands acknowledged and
///   ignored
/// - `saga_command_state_total{saga,service,source}`: where each command's saga came from:
///   `command` (the sealed copy it carried, ``SagaTopology/stateInCommands``) or `store` (loaded)
/// - `saga_dead_letters_total{service}`
/// - `saga_processing_failures_total{service}`: deliveries that could not be processed for want
///   of the store or the broker (an outage, a lock, a statement the database refuses) and were
///   redelivered
/// - `saga_broker_connected{connection}` (SagaRabbitMQ): 1 while the bus's connection is up
/// - `saga_handed_back_total{service}`: commands this service's instance had no handler for and
///   handed back for another release (a rolling upgrade; `Docs/Upgrades.md`)
/// - `saga_circuit_opened_total{saga,step}`: times a step's circuit breaker opened (or opened
///   again after a failed probe) in this process; `saga_circuit_closed_total{saga,step}`: times a
///   probe closed it (``SagaFallback``)
/// - `saga_reaped_total{saga,status}`: stalled sagas whose command the reaper re-sent (or that it
///   gave up on), by the status they were stalled in (`running`, `compensating`)
///
/// The counters and gauges of a definition (per step where they have a step) are created at zero
/// the first time this process sees one of its sagas, so that `rate()` and `increase()` see the
/// first event too.
struct SagaMetrics: Sendable {
    /// The definitions whose series this process has created.
    private static let prepared = Mutex<Set<String>>([])

    func started(_ definition: SagaDefinition) {
        let saga = definition.name
        prepare(definition)
        Counter(label: "saga_started_total", dimensions: [("saga", saga)]).increment()
        Meter(label: "saga_in_progress", dimensions: [("saga", saga)]).increment()
    }

    /// Records what a committed transition changed.
    func transition(from old: SagaState, to new: SagaState, definition: SagaDefinition) {
        let saga = new.name
        prepare(definition)
        // A saga fails when it leaves running or waiting for compensating, compensated or needs
        // attention (reaching a wait or completing is no failure). The step is the one whose
        // action failed (in a parallel group, the failed member, not the last to report).
        let failed: Set<SagaStatus> = [.compensating, .compensated, .needsAttention]
        if old.status == .running || old.status == .waiting, failed.contains(new.status) {
            // The action that failed in this transition; in a parallel group, whose compensation
            // starts when its last member reports, the member that failed before; else (a
            // deadline, an operator) the last action recorded.
            let group = definition.groupRange(of: old.currentStep)
            let step =
                new.history.last(where: { $0.phase == .action && $0.outcome == .failed && !old.history.contains($0) })?.stepName
                ?? group.flatMap { group in
                    new.history.last(where: { $0.phase == .action && $0.outcome == .failed && group.contains($0.step) })?.stepName
                }
                ?? new.history.last(where: { $0.phase == .action })?.stepName ?? "none"
            Counter(label: "saga_failed_total", dimensions: [("saga", saga), ("step", step)]).increment()
        }
        if new.status == .compensating, old.status == .compensating, new.attempt > old.attempt {
            let step = new.history.last(where: { $0.phase == .compensation })?.stepName ?? "none"
            Counter(label: "saga_compensation_retries_total", dimensions: [("saga", saga), ("step", step)]).increment()
        }
        if new.reapAttempts > old.reapAttempts {
            Counter(label: "saga_reaped_total", dimensions: [("saga", saga), ("status", old.status.rawValue)]).increment()
        }
        if (new.status == .compensating) != (old.status == .compensating) {
            let pending = Meter(label: "saga_compensations_pending", dimensions: [("saga", saga)])
            if new.status == .compensating { pending.increment() } else { pending.decrement() }
        }
        // An operator's retry or compensate takes a saga out of needs-attention: it is in
        // progress again until its next terminal state.
        if old.status.isTerminal, !new.status.isTerminal {
            Meter(label: "saga_in_progress", dimensions: [("saga", saga)]).increment()
        }
        guard new.status.isTerminal, !old.status.isTerminal else { return }
        switch new.status {
        case .completed: Counter(label: "saga_completed_total", dimensions: [("saga", saga)]).increment()
        case .compensated: Counter(label: "saga_compensated_total", dimensions: [("saga", saga)]).increment()
        case .needsAttention: Counter(label: "saga_needs_attention_total", dimensions: [("saga", saga)]).increment()
        case .running, .compensating, .waiting: break
        }
        Meter(label: "saga_in_progress", dimensions: [("saga", saga)]).decrement()
        let seconds = max(0, new.updatedAt.timeIntervalSince(new.createdAt))
        Timer(
            label: "saga_duration_seconds",
            dimensions: [("saga", saga), ("outcome", new.status.rawValue), ("waited", Self.waited(new, definition) ? "true" : "false")],
            preferredDisplayUnit: .seconds
        )
        .recordNanoseconds(Int64(seconds * 1e9))
    }

    /// Whether the saga reached a wait step (its duration then includes a wait for a signal).
    private static func waited(_ state: SagaState, _ definition: SagaDefinition) -> Bool {
        state.history.contains { record in
            record.phase == .action && definition.steps.indices.contains(record.step) && definition.steps[record.step].wait != nil
        }
    }

    func stepDuration(saga: String, step: String, phase: StepPhase, duration: Duration) {
        Timer(
            label: "saga_step_duration_seconds", dimensions: [("saga", saga), ("step", step), ("phase", phase.rawValue)],
            preferredDisplayUnit: .seconds
        )
        .recordNanoseconds(Int64(duration.seconds * 1e9))
    }

    /// A step's circuit breaker opened (`true`) or closed (`false`) by a save of this process.
    func circuit(_ definition: SagaDefinition, step: Int, opened: Bool) {
        prepare(definition)
        let dimensions = [("saga", definition.name), ("step", definition.steps[step].name)]
        Counter(label: opened ? "saga_circuit_opened_total" : "saga_circuit_closed_total", dimensions: dimensions).increment()
    }

    func stale(service: String) {
        Counter(label: "saga_stale_messages_total", dimensions: [("service", service)]).increment()
    }

    /// Where a command's saga state came from: the copy it carried, or the store.
    func commandState(saga: String, service: String, carried: Bool) {
        Counter(
            label: "saga_command_state_total",
            dimensions: [("saga", saga), ("service", service), ("source", carried ? "command" : "store")]
        ).increment()
    }

    func deadLettered(service: String) {
        Counter(label: "saga_dead_letters_total", dimensions: [("service", service)]).increment()
    }

    /// A delivery this service could not process for want of its store or broker (an outage, a
    /// lock, a statement the database refuses): redelivered.
    func processingFailed(service: String) {
        Counter(label: "saga_processing_failures_total", dimensions: [("service", service)]).increment()
    }

    func handedBack(service: String) {
        Counter(label: "saga_handed_back_total", dimensions: [("service", service)]).increment()
    }

    /// Creates a participant's per-service counters at zero when it starts, so that
    /// `increase()` (and the alerts) see its first dead letter or hand-back too.
    func prepare(service: String) {
        for label in ["saga_dead_letters_total", "saga_handed_back_total", "saga_stale_messages_total", "saga_processing_failures_total"] {
            _ = Counter(label: label, dimensions: [("service", service)])
        }
    }

    /// Creates the definition's counters and gauges at zero, once per process and version: a
    /// counter that first appears at 1 hides that first event from `increase()`, and so from the
    /// alerts. (Histograms appear with their first observation.)
    private func prepare(_ definition: SagaDefinition) {
        let saga = definition.name
        guard Self.prepared.withLock({ $0.insert("\(saga)@\(definition.version)").inserted }) else { return }
        let dimensions = [("saga", saga)]
        for step in definition.steps {
            _ = Counter(label: "saga_failed_total", dimensions: [("saga", saga), ("step", step.name)])
            if step.fallback?.breaker != nil {
                _ = Counter(label: "saga_circuit_opened_total", dimensions: [("saga", saga), ("step", step.name)])
                _ = Counter(label: "saga_circuit_closed_total", dimensions: [("saga", saga), ("step", step.name)])
            }
            if step.compensation != nil {
                _ = Counter(label: "saga_compensation_retries_total", dimensions: [("saga", saga), ("step", step.name)])
            }
        }
        for label in ["saga_started_total", "saga_completed_total", "saga_compensated_total", "saga_needs_attention_total"] {
            _ = Counter(label: label, dimensions: dimensions)
        }
        for status in [SagaStatus.running, .compensating] {
            _ = Counter(label: "saga_reaped_total", dimensions: [("saga", saga), ("status", status.rawValue)])
        }
        _ = Meter(label: "saga_in_progress", dimensions: dimensions)
        _ = Meter(label: "saga_compensations_pending", dimensions: dimensions)
    }
}
