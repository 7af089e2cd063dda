public import Participant
public import Testing

/// The contract of ``SagaStore``, as checks you run against your own implementation from your
/// Swift Testing tests. SagaKit's in-memory, SQLite and PostgreSQL stores pass every one of them.
///
/// ```swift
/// import SagaTesting
/// import Testing
///
/// @Test(.timeLimit(.minutes(1)), arguments: SagaStoreConformance.checks)
/// func myStoreConforms(_ check: SagaStoreConformance.Check) async throws {
///     try await check.run { body in
///         try await MyStore.withFresh { store in
///             try await body(.init(store: store, other: store))
///         }
///     }
/// }
/// ```
///
/// Each check runs on a fresh, empty store that your factory creates (and cleans up), so the
/// checks can run in parallel. Failures are Swift Testing issues (`#expect`) recorded in the
/// running test; the test's output names the check (its ``Check/name``).
public enum SagaStoreConformance {
    /// The store a check runs on, and a second handle on the same data.
    ///
    /// Several processes share a store: the checks write through ``store`` and read or compete
    /// through ``other``, so a store that only looks consistent within one handle (a cache, a
    /// connection's uncommitted transaction) fails. Pass the same instance twice when there is no
    /// such thing as a second handle (an in-memory store).
    public struct StoreUnderTest: Sendable {
        /// The store under test.
        public let store: any SagaStore
        /// Another instance on the same data: another connection pool on the same database, the
        /// same object for an in-memory store.
        public let other: any SagaStore

        /// Creates the subject of a check.
        public init(store: any SagaStore, other: any SagaStore) {
            self.store = store
            self.other = other
        }
    }

    /// One clause of the ``SagaStore`` contract, run by ``run(_:sourceLocation:)``.
    public struct Check: Sendable, Identifiable, CustomStringConvertible, CustomTestStringConvertible {
        /// The check's name, which is also the name of its static property on
        /// ``SagaStoreConformance`` (e.g. `createIsIdempotentAndStartsAtVersionOne`), where its
        /// documentation says what it checks.
        public let name: String
        private let body: @Sendable (StoreUnderTest) async throws -> Void

        init(_ name: String, _ body: @escaping @Sendable (StoreUnderTest) async throws -> Void) {
            self.name = name
            self.body = body
        }

        /// The ``name``: Swift Testing identifies a test case by it.
        public var id: String { name }
        /// The ``name``.
        public var description: String { name }
        /// The ``name``, as test output shows the check.
        public var testDescription: String { name }

        /// Runs the check on a fresh, empty store.
        ///
        /// - Parameters:
        ///   - factory: creates a fresh, empty store (and a second handle on its data), calls
        ///     `body` with them once, and cleans up when `body` returns or throws.
        ///   - sourceLocation: where an issue is recorded when `factory` never calls `body`.
        /// - Throws: what the store or the factory throws. Broken expectations are recorded as
        ///   issues in the running test instead.
        public func run(
            _ factory: (_ body: (StoreUnderTest) async throws -> Void) async throws -> Void,
            sourceLocation: SourceLocation = #_sourceLocation
        ) async throws {
            var ran = false
            try await factory { subject in
                ran = true
                try await body(subject)
            }
            if !ran {
                Issue.record(
                    "the factory returned without calling its body: check '\(name)' did not run",
                    sourceLocation: sourceLocation)
            }
        }
    }

    /// Every check, in a stable order. Use it as the arguments of a parameterised test. A store
    /// that runs local writes (``SagaStore/supportsLocalWrites``) runs ``localWriteChecks`` too.
    public static let checks: [Check] = [
        createIsIdempotentAndStartsAtVersionOne,
        loadingAnUnknownSagaThrowsUnknownSaga,
        commitSwapsTheVersionAndRecordsTheOutbox,
        aConflictingCommitChangesNothingAndSaysWhichVersions,
        committingAnUnknownSagaThrowsUnknownSaga,
        payloadsRoundTripExactly,
        everyFieldRoundTripsIncludingHistory,
        timestampsKeepMilliseconds,
        outboxIsPendingOldestFirstUntilMarkedSent,
        messagesWithTheSameTimeKeepTheirOrder,
        listFiltersAndSortsByUpdateTime,
        listFiltersByDefinitionVersion,
        listFiltersByMinimumAttempt,
        listFiltersByMinimumReapAttempts,
        listFiltersByDeadline,
        listFiltersByCurrentStep,
        claimPendingOutboxLeasesTheMessagesItReturns,
        purgeFinishedDeletesOldFinishedSagasWithNothingToSend,
        countByStatusCountsEveryStatus,
        countByVersionCountsEachVersionsSagas,
        claimStalledLeasesSagasUntilTheLeaseExpires,
        claimStalledForATopologyLeavesOtherTopologiesAlone,
        listingAndCountingForATopologyLeaveOtherTopologiesOut,
        aCommitEndsTheLease,
        twoTopologiesSharingAStoreSeeOnlyTheirOwnMessages,
        transientBodyIsNotStored,
        messagesThatKeepFailingDoNotKeepAGoodOneWaiting,
        oneSagasOutboxIsListedWithItsFailedPublishes,
        localWritesThatCannotRunStoreNothing,
        circuitsAreComparedAndSwapped,
        participantsAreRecordedRefreshedAndRemoved,
        stateSealsVerifyInEveryProcessOfTheStoreOnly,
    ]
}
