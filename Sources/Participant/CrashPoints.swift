import Synchronization

/// A named place in the runtime where a test can make a participant process die (the
/// crash-point matrix, `Tests/ParticipantTests/CrashMatrixTests.swift`).
///
/// Test-only: the type and ``CrashPoints`` have `package` visibility, so only targets of the
/// SagaKit package (the `ParticipantTestHost` test executable) can install a hook; a user's
/// service cannot, and the runtime reads no environment variable for it.
package enum CrashPoint: String, CaseIterable, Sendable {
    /// A command was accepted (current, handler found), its handler is about to run.
    case beforeHandler
    /// Inside the handler, after its local effect committed and before it reports the outcome.
    /// Reached by the test host's handlers, not by the runtime.
    case afterHandlerEffect
    /// The saga's transition and its outbox are committed; nothing is published yet.
    case afterCommitBeforePublish
    /// The next command is published and confirmed; the delivery is not acknowledged yet.
    case afterPublishBeforeAck
    /// The outbox relay published a message and has not marked it sent.
    case insideOutboxRelay
    /// The reaper claimed a stalled saga and has not re-sent its command.
    case insideReaper
    /// A compensation handler reported its outcome, which is not committed yet.
    case duringCompensation
}

/// The hook the runtime calls at each ``CrashPoint``.
///
/// ```swift
/// CrashPoints.install { point in
///     if point == .afterCommitBeforePublish { kill(getpid(), SIGKILL) }
/// }
/// ```
///
/// Without an installed hook, ``reach(_:)`` costs one relaxed atomic load.
package enum CrashPoints {
    /// Whether a hook is installed: the only thing read on the hot path.
    private static let armed = Atomic<Bool>(false)
    private static let hook = Mutex<(@Sendable (CrashPoint) -> Void)?>(nil)

    /// Installs `hook`, called (synchronously, on the caller's thread) each time the runtime
    /// reaches a crash point. Replaces a hook installed before.
    package static func install(_ hook: @escaping @Sendable (CrashPoint) -> Void) {
        self.hook.withLock { $0 = hook }
        armed.store(true, ordering: .releasing)
    }

    /// Removes the hook.
    package static func uninstall() {
        armed.store(false, ordering: .releasing)
        hook.withLock { $0 = nil }
    }

    /// Called by the runtime at `point`: a no-op unless a hook is installed.
    @inline(__always)
    package static func reach(_ point: CrashPoint) {
        guard armed.load(ordering: .relaxed) else { return }
        callHook(point)
    }

    @inline(never)
    private static func callHook(_ point: CrashPoint) {
        hook.withLock { $0 }?(point)
    }
}
