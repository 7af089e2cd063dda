public import Foundation

extension SagaState {
    /// When the saga last made progress: its last update, or, when the reaper has re-sent its
    /// command since (a re-send updates the saga too), the time of its last record that is not a
    /// re-send.
    public var lastProgressAt: Date {
        guard reapAttempts > 0 else { return updatedAt }
        return history.last { $0.outcome != .resent }?.finishedAt ?? createdAt
    }
}

extension SagaStore {
    /// The sagas matching `query` that made no progress since `before`
    /// (``SagaState/lastProgressAt``): those not updated since, and those the reaper re-sent
    /// without progress since, whose re-sends updated them a moment ago. Most recently updated
    /// first, at most `query.limit` (of the re-sent ones, the 10,000 most recently updated are
    /// looked at). `query.updatedBefore` and `query.minimumReapAttempts` are set here.
    ///
    /// This is what an operator means by "stalled": `updatedBefore` alone loses a saga from view
    /// each time the reaper re-sends its command.
    public func listStalled(_ query: SagaQuery, noProgressSince before: Date) async throws -> [SagaState] {
        var notUpdated = query
        notUpdated.updatedBefore = before
        notUpdated.minimumReapAttempts = nil
        var reaped = query
        reaped.updatedBefore = nil
        reaped.minimumReapAttempts = 1
        // Some of the re-sent ones moved since their re-send began: filtered below, after the
        // store's limit, so look at more of them (sagas being re-sent are few but in an outage).
        reaped.limit = max(query.limit, 10_000)
        var seen = Set<SagaID>()
        let found = (try await list(notUpdated) + (try await list(reaped))).filter { seen.insert($0.id).inserted }
        return Array(
            found.filter { $0.lastProgressAt < before }
                .sorted { ($0.updatedAt, $1.id) > ($1.updatedAt, $0.id) }
                .prefix(max(0, query.limit)))
    }
}
