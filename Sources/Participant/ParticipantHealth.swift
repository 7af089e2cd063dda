import Synchronization

/// A participant's entry in the health registry: not ready while it starts, declares its queue
/// or stops; ready while it consumes; not ready again while processing fails for want of the
/// store or the broker (from the first such failure until a command is processed again).
///
/// The hot path (``processed()``) reads one atomic flag and touches the registry only when the
/// state changes.
final class ParticipantHealth: Sendable {
    private let registry: SagaHealth
    private let name: String
    private let component = Mutex<SagaHealth.Component?>(nil)
    /// Set from a processing failure until the next command processed.
    private let failing = Atomic<Bool>(false)
    /// What the participant does while it is not failing (`consuming queue 'x'`).
    private let work = Mutex<String?>(nil)

    init(registry: SagaHealth, service: String) {
        self.registry = registry
        self.name = "participant '\(service)'"
    }

    /// Registers the entry (the participant started running).
    func begin(_ detail: String) {
        let entry = registry.register(name, detail: detail)
        component.withLock { $0 = entry }
    }

    /// Removes the entry (the participant stopped).
    func end() {
        component.withLock {
            $0?.remove()
            $0 = nil
        }
    }

    func notReady(_ detail: String) {
        work.withLock { $0 = nil }
        component.withLock { $0?.notReady(detail) }
    }

    /// The participant consumes its queue: ready.
    func consuming(_ detail: String) {
        work.withLock { $0 = detail }
        failing.store(false, ordering: .relaxed)
        component.withLock { $0?.ready(detail) }
    }

    /// Processing failed for want of the store or the broker (the command is redelivered).
    func processingFailed(_ error: any Error) {
        failing.store(true, ordering: .relaxed)
        component.withLock { $0?.notReady("processing fails, commands are redelivered: \(error)") }
    }

    /// A command was acknowledged (processed, stale, or dead-lettered).
    func processed() {
        guard failing.load(ordering: .relaxed),
            failing.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged
        else { return }
        guard let detail = work.withLock({ $0 }) else { return }
        component.withLock { $0?.ready(detail) }
    }
}
