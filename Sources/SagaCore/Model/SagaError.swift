/// An error from SagaKit's saga model, stores and runtime: what happened and what to do.
///
/// `description` is safe to log: it never contains payloads or passwords.
public struct SagaError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// No saga with that id.
        public static let unknownSaga = Code("unknownSaga")
        /// No saga definition with that name.
        public static let unknownDefinition = Code("unknownDefinition")
        /// The saga definition is invalid.
        public static let invalidDefinition = Code("invalidDefinition")
        /// A payload that is not a JSON object, or that does not decode into the requested type.
        public static let invalidPayload = Code("invalidPayload")
        /// Someone else changed the saga first (optimistic concurrency).
        public static let versionConflict = Code("versionConflict")
        /// A saga with that id already exists with different content.
        public static let duplicateSaga = Code("duplicateSaga")
        /// The store cannot be reached or opened.
        public static let storeUnavailable = Code("storeUnavailable")
        /// The store refused an operation's data or statement (a constraint, a value it cannot
        /// hold, a trigger that raised): running it again gives the same error, unlike
        /// `storeUnavailable`. A participant tries a command whose transition is refused once
        /// more, then dead-letters it with the store's message (`Docs/Guarantees.md`).
        public static let storeRefused = Code("storeRefused")
        /// The database was created by a newer SagaKit.
        public static let schemaTooNew = Code("schemaTooNew")
        /// The store's schema is missing or older than this SagaKit's, and the store was told
        /// not to create or migrate it (the operator tools: `schema.migrate` is `false`).
        public static let schemaTooOld = Code("schemaTooOld")
        /// A configuration value is invalid.
        public static let invalidConfiguration = Code("invalidConfiguration")
        /// A handler for the command was already registered.
        public static let duplicateHandler = Code("duplicateHandler")
        /// A message that cannot be processed (malformed, unknown command, wrong content type).
        public static let invalidMessage = Code("invalidMessage")
        /// An operation that is not allowed in the saga's current state.
        public static let invalidState = Code("invalidState")
        /// Waiting for an outcome timed out.
        public static let timeout = Code("timeout")
        /// A handler's outcome was not recorded: the saga moved on while the handler ran (an
        /// operator compensated it, a deadline passed, the step timed out). The handler's effect
        /// is not part of the saga: see ``SagaError/outcomeDiscarded(sagaID:command:reason:)``.
        public static let outcomeDiscarded = Code("outcomeDiscarded")
        /// A handler's local write (``LocalWrite``) failed or affected other than the expected
        /// number of rows: nothing of the transition was stored.
        public static let localWriteFailed = Code("localWriteFailed")

        /// The operation is not supported by this implementation (for example, a store that
        /// does not keep saga definitions).
        public static let unsupported = Code("unsupported")

        /// The code's name.
        public var description: String { name }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened.
    public var message: String
    /// What to do about it, when there is something to do.
    public var recoverySuggestion: String?
    /// The underlying error, if any.
    public var underlying: (any Error)?

    /// Creates an error.
    public init(_ code: Code, _ message: String, recoverySuggestion: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.recoverySuggestion = recoverySuggestion
        self.underlying = underlying
    }

    /// The message followed by the recovery suggestion.
    public var description: String {
        var text = message
        if let recoverySuggestion { text += " (\(recoverySuggestion))" }
        return text
    }

    /// A version conflict on a saga.
    public static func versionConflict(sagaID: SagaID, expected: Int64, actual: Int64?) -> SagaError {
        let actualText = actual.map { "\($0)" } ?? "unknown"
        return SagaError(
            .versionConflict,
            "saga \(sagaID) changed concurrently: expected version \(expected), store has \(actualText)",
            recoverySuggestion: "reload the saga and decide again; the runtime does this by itself"
        )
    }

    /// An unknown saga id.
    public static func unknownSaga(_ id: SagaID) -> SagaError {
        SagaError(
            .unknownSaga,
            "no saga with id \(id)",
            recoverySuggestion: "check the id, and that every participant uses the same store"
        )
    }

    /// A handler's outcome that was not recorded because the saga moved on while it ran.
    ///
    /// This run's report did not count. Whether its effect must be undone depends on where the
    /// saga is: only when it is compensating or compensated and its history records no
    /// completion of the step (another run of the step may have counted, with this very effect).
    /// `advice` says which, when the caller knows where the saga is.
    public static func outcomeDiscarded(sagaID: SagaID, command: String, reason: String, advice: String? = nil) -> SagaError {
        SagaError(
            .outcomeDiscarded,
            "saga \(sagaID) moved on while the handler of '\(command)' ran; its outcome was not recorded (\(reason))",
            recoverySuggestion: advice
                ?? "undo this run's effect only if the saga is compensating or compensated and its history records no completion of this step (Docs/WritingParticipants.md, 'When the call throws outcomeDiscarded'); do not report again"
        )
    }

    /// A store told not to create or migrate its schema (`schema.migrate` false, as the operator
    /// tools open it) found it missing (`found` 0) or older than `current`.
    /// - Parameters:
    ///   - store: the store as messages name it (`the SQLite store /var/lib/sagas.db`).
    ///   - check: what to check when there is no schema at all (`the file (SAGAKIT_STORE_URL)`).
    package static func schemaNotMigrated(found: Int, current: Int, store: String, check: String) -> SagaError {
        if found == 0 {
            return SagaError(
                .schemaTooOld, "\(store) has no SagaKit tables, and this process does not create them (schema.migrate is false)",
                recoverySuggestion:
                    "check \(check) that your services use; to create an empty store here on purpose, set SAGAKIT_STORE_SCHEMA_MIGRATE=true"
            )
        }
        return SagaError(
            .schemaTooOld,
            "\(store) has schema version \(found); this SagaKit uses version \(current), and this process does not migrate it (schema.migrate is false)",
            recoverySuggestion:
                "start a service built with this SagaKit release (services migrate the store), or use the tool of your services' release; SAGAKIT_STORE_SCHEMA_MIGRATE=true lets this process migrate it"
        )
    }
}
