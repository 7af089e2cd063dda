/// Runs `operation`, giving up after `limit`: then it is cancelled and `timedOut()` is thrown.
///
/// The operation must end when cancelled (a wait that ignores cancellation keeps this call waiting
/// until it ends by itself, as a task group waits for its children).
package func withTimeLimit<T: Sendable>(
    _ limit: Duration, timedOut: @escaping @Sendable () -> any Error, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw timedOut() }
        return value
    }
}
