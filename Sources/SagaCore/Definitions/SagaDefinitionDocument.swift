public import Foundation

/// The canonical serialised form of a ``SagaDefinition``: what stores keep and what every
/// process (and the `saga` CLI) rebuilds a definition from.
///
/// Encoded by ``SagaDefinition/canonicalJSON()`` as JSON with sorted keys, without insignificant
/// whitespace, with every duration in whole milliseconds, so that the same definition always
/// gives the same bytes and the same ``SagaDefinition/contentHash``.
public struct SagaDefinitionDocument: Sendable, Hashable, Codable {
    /// The saga's name.
    public var name: String
    /// The definition's version (1 or more).
    public var version: Int
    /// The steps in execution order.
    public var steps: [Step]
    /// The saga's deadline in milliseconds; `nil` for none.
    public var deadlineMilliseconds: Int64?
    /// The retry policy of compensations.
    public var compensationRetry: Retry

    /// One step of the document.
    public struct Step: Sendable, Hashable, Codable {
        /// The step's name.
        public var name: String
        /// The action command.
        public var action: String
        /// The compensation command, if any.
        public var compensation: String?
        /// Whether the step is the pivot.
        public var pivot: Bool
        /// The retry policy of the action.
        public var retry: Retry
        /// The handler's timeout in milliseconds; `nil` for none.
        public var timeoutMilliseconds: Int64?
        /// When the step runs; `nil` (and absent from the JSON, so that definitions without
        /// conditions keep their bytes and hash) for always.
        public var condition: SagaCondition?
        /// The parallel group the step belongs to; `nil` (and absent from the JSON, so that
        /// definitions without groups keep their bytes and hash) for a step on its own.
        public var group: String?
        /// For a wait step, what it waits for; `nil` (and absent from the JSON) otherwise.
        public var wait: Wait?
        /// The step's fallback; `nil` (and absent from the JSON) for none.
        public var fallback: Fallback?
    }

    /// A step's fallback (see ``SagaFallback``).
    public struct Fallback: Sendable, Hashable, Codable {
        /// The fallback's command.
        public var action: String
        /// The circuit breaker's failure threshold; `nil` without a breaker.
        public var breakerFailureThreshold: Int?
        /// How long the circuit stays open, in milliseconds; `nil` without a breaker.
        public var breakerOpenForMilliseconds: Int64?
    }

    /// What a wait step waits for (see ``SagaWait``).
    public struct Wait: Sendable, Hashable, Codable {
        /// The signal's name.
        public var signal: String
        /// How long the saga waits, in milliseconds.
        public var timeoutMilliseconds: Int64
        /// `compensate` or `continue`.
        public var onTimeout: SagaWait.TimeoutAction
    }

    /// A retry policy, with its delays in milliseconds.
    public struct Retry: Sendable, Hashable, Codable {
        /// Total number of attempts.
        public var maxAttempts: Int
        /// The delay before the second attempt, in milliseconds.
        public var initialDelayMilliseconds: Int64
        /// The growth factor of the delay.
        public var multiplier: Double
        /// The longest delay, in milliseconds.
        public var maxDelayMilliseconds: Int64

        /// The document form of a policy.
        public init(_ policy: RetryPolicy) {
            maxAttempts = policy.maxAttempts
            initialDelayMilliseconds = wholeMilliseconds(policy.initialDelay)
            multiplier = policy.multiplier
            maxDelayMilliseconds = wholeMilliseconds(policy.maxDelay)
        }

        /// The policy this document describes.
        public var policy: RetryPolicy {
            RetryPolicy(
                maxAttempts: maxAttempts, initialDelay: .milliseconds(initialDelayMilliseconds), multiplier: multiplier,
                maxDelay: .milliseconds(maxDelayMilliseconds))
        }
    }

    /// The document of a definition (durations rounded to whole milliseconds).
    public init(_ definition: SagaDefinition) {
        name = definition.name
        version = definition.version
        steps = definition.steps.map { step in
            Step(
                name: step.name, action: step.action, compensation: step.compensation, pivot: step.options.isPivot,
                retry: Retry(step.options.retry), timeoutMilliseconds: step.options.timeout.map(wholeMilliseconds),
                condition: step.condition, group: step.group,
                wait: step.wait.map {
                    Wait(signal: $0.signal, timeoutMilliseconds: wholeMilliseconds($0.timeout), onTimeout: $0.onTimeout)
                },
                fallback: step.fallback.map {
                    Fallback(
                        action: $0.action, breakerFailureThreshold: $0.breaker?.failureThreshold,
                        breakerOpenForMilliseconds: $0.breaker.map { wholeMilliseconds($0.openFor) })
                })
        }
        deadlineMilliseconds = definition.deadline.map(wholeMilliseconds)
        compensationRetry = Retry(definition.compensationRetry)
    }

    /// Rebuilds the definition through ``SagaBuilder``, so that it is validated like any other —
    /// except for the rules newer than the stores' documents (see
    /// ``SagaBuilder/build(stored:)``): a definition an earlier release stored keeps loading, so
    /// that its sagas in flight finish.
    /// - Throws: `invalidDefinition` when the document does not describe a valid definition.
    public func definition() throws -> SagaDefinition {
        var builder = SagaBuilder(name).version(version).compensationRetry(compensationRetry.policy)
        if let deadlineMilliseconds { builder = builder.deadline(.milliseconds(deadlineMilliseconds)) }
        for step in steps {
            builder = builder.appending(
                SagaStep(
                    name: step.name, action: step.action, compensation: step.compensation,
                    options: StepOptions(
                        isPivot: step.pivot, retry: step.retry.policy, timeout: step.timeoutMilliseconds.map { .milliseconds($0) }),
                    condition: step.condition, group: step.group,
                    wait: step.wait.map {
                        SagaWait(signal: $0.signal, timeout: .milliseconds($0.timeoutMilliseconds), onTimeout: $0.onTimeout)
                    },
                    fallback: step.fallback.map { fallback in
                        SagaFallback(
                            action: fallback.action,
                            breaker: fallback.breakerFailureThreshold.map {
                                CircuitBreakerPolicy(failureThreshold: $0, openFor: .milliseconds(fallback.breakerOpenForMilliseconds ?? 0))
                            })
                    }))
        }
        return try builder.build(stored: true)
    }

    /// The canonical bytes: JSON, sorted keys, no insignificant whitespace.
    public func canonicalJSON() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings, integers, doubles and booleans cannot fail.
        return (try? Array(encoder.encode(self))) ?? []
    }

    /// Decodes a document from its JSON bytes.
    /// - Throws: `invalidDefinition` when the bytes are not a definition document.
    public init(json: [UInt8]) throws {
        do {
            self = try JSONDecoder().decode(Self.self, from: Data(json))
        } catch {
            throw SagaError(.invalidDefinition, "not a saga definition document: \(error)", underlying: error)
        }
    }
}

extension SagaDefinition {
    /// The canonical serialised form of the definition.
    public var document: SagaDefinitionDocument { SagaDefinitionDocument(self) }

    /// The canonical bytes of the definition (see ``SagaDefinitionDocument``).
    public func canonicalJSON() -> [UInt8] { document.canonicalJSON() }

    /// A stable fingerprint of the canonical bytes: 16 lowercase hex digits of their FNV-1a 64-bit
    /// hash. The same definition (name, version and content) always has the same hash, in every
    /// process and on every platform. A fingerprint, not a cryptographic digest.
    public var contentHash: String { Self.fnv1a64Hex(canonicalJSON()) }

    /// Decodes a definition from canonical (or any equivalent) JSON and validates it.
    /// - Throws: `invalidDefinition`.
    public init(canonicalJSON bytes: [UInt8]) throws {
        self = try SagaDefinitionDocument(json: bytes).definition()
    }

    /// What differs between this definition and `other`, in words, one entry per difference
    /// (empty when their documents are equal). Phrased "this vs other", for example
    /// `step 2 'ship': action shipping.ship vs shipping.send`.
    public func differences(from other: SagaDefinition) -> [String] {
        let mine = document
        let theirs = other.document
        var differences: [String] = []
        func compare<T: Equatable>(_ label: String, _ lhs: T, _ rhs: T, _ text: (T) -> String) {
            if lhs != rhs { differences.append("\(label) \(text(lhs)) vs \(text(rhs))") }
        }
        compare("name", mine.name, theirs.name) { $0 }
        compare("version", mine.version, theirs.version) { "\($0)" }
        compare("deadline", mine.deadlineMilliseconds, theirs.deadlineMilliseconds, Self.describe(milliseconds:))
        compareRetry("compensation retry", mine.compensationRetry, theirs.compensationRetry, into: &differences)
        func compareStep(_ label: String, _ lhs: SagaDefinitionDocument.Step, _ rhs: SagaDefinitionDocument.Step) {
            compare("\(label) name", lhs.name, rhs.name) { $0 }
            compare("\(label) action", lhs.action, rhs.action) { $0 }
            compare("\(label) compensation", lhs.compensation, rhs.compensation) { $0 ?? "none" }
            compare("\(label) pivot", lhs.pivot, rhs.pivot) { $0 ? "yes" : "no" }
            compare("\(label) condition", lhs.condition, rhs.condition) { $0.map { "'\($0)'" } ?? "none" }
            compare("\(label) parallel group", lhs.group, rhs.group) { $0.map { "'\($0)'" } ?? "none" }
            compare("\(label) fallback", lhs.fallback, rhs.fallback) { fallback in
                fallback.map { fallback in
                    fallback.action
                        + (fallback.breakerFailureThreshold.map {
                            " (breaker: \($0) failures, open \(fallback.breakerOpenForMilliseconds ?? 0) ms)"
                        } ?? "")
                } ?? "none"
            }
            compare("\(label) wait", lhs.wait, rhs.wait) { wait in
                wait.map { "for '\($0.signal)' up to \($0.timeoutMilliseconds) ms, then \($0.onTimeout.rawValue)" } ?? "none"
            }
            compare("\(label) timeout", lhs.timeoutMilliseconds, rhs.timeoutMilliseconds, Self.describe(milliseconds:))
            compareRetry("\(label) retry", lhs.retry, rhs.retry, into: &differences)
        }
        // Steps are matched by name when both have unique names, so that a step inserted or
        // removed reads as that (not as every later step renamed); by position otherwise.
        for pair in Self.alignSteps(mine.steps.map(\.name), theirs.steps.map(\.name)) {
            switch pair {
            case .added(let index):
                differences.append("step \(index + 1) '\(theirs.steps[index].name)': absent vs present")
            case .removed(let index):
                differences.append("step \(index + 1) '\(mine.steps[index].name)': present vs absent")
            case .matched(let index, let other, let moved):
                let lhs = mine.steps[index]
                let rhs = theirs.steps[other]
                let label = index == other ? "step \(index + 1) '\(lhs.name)':" : "step '\(lhs.name)' (\(index + 1) vs \(other + 1)):"
                if moved { differences.append("\(label) order: moved") }
                compareStep(label, lhs, rhs)
            }
        }
        return differences
    }

    /// How two step lists line up, in the order of the first.
    enum StepPair: Equatable {
        /// A step of the second list only (its index there).
        case added(Int)
        /// A step of the first list only.
        case removed(Int)
        /// The same step in both (by name, or by position); `moved` when their order differs.
        case matched(Int, Int, moved: Bool)
    }

    /// Lines up steps by name (the longest common subsequence keeps the order; a step in both
    /// outside it has moved) when every name is unique in both lists, by position otherwise.
    static func alignSteps(_ mine: [String], _ theirs: [String]) -> [StepPair] {
        guard mine != theirs, Set(mine).count == mine.count, Set(theirs).count == theirs.count else {
            return (0..<max(mine.count, theirs.count)).map { index in
                index >= mine.count ? .added(index) : index >= theirs.count ? .removed(index) : .matched(index, index, moved: false)
            }
        }
        // Longest common subsequence of the names.
        var lengths = Array(repeating: Array(repeating: 0, count: theirs.count + 1), count: mine.count + 1)
        for i in stride(from: mine.count - 1, through: 0, by: -1) {
            for j in stride(from: theirs.count - 1, through: 0, by: -1) {
                lengths[i][j] = mine[i] == theirs[j] ? lengths[i + 1][j + 1] + 1 : max(lengths[i + 1][j], lengths[i][j + 1])
            }
        }
        var inOrder: [Int: Int] = [:]
        var (i, j) = (0, 0)
        while i < mine.count && j < theirs.count {
            if mine[i] == theirs[j] {
                inOrder[i] = j
                (i, j) = (i + 1, j + 1)
            } else if lengths[i + 1][j] >= lengths[i][j + 1] {
                i += 1
            } else {
                j += 1
            }
        }
        let theirIndex = Dictionary(uniqueKeysWithValues: theirs.enumerated().map { ($1, $0) })
        var pairs: [StepPair] = []
        var matchedTheirs: Set<Int> = []
        for (index, name) in mine.enumerated() {
            if let other = inOrder[index] {
                pairs.append(.matched(index, other, moved: false))
                matchedTheirs.insert(other)
            } else if let other = theirIndex[name] {
                pairs.append(.matched(index, other, moved: true))
                matchedTheirs.insert(other)
            } else {
                pairs.append(.removed(index))
            }
        }
        for index in theirs.indices where !matchedTheirs.contains(index) { pairs.append(.added(index)) }
        return pairs
    }

    private func compareRetry(
        _ label: String, _ lhs: SagaDefinitionDocument.Retry, _ rhs: SagaDefinitionDocument.Retry, into differences: inout [String]
    ) {
        if lhs.maxAttempts != rhs.maxAttempts { differences.append("\(label) maxAttempts \(lhs.maxAttempts) vs \(rhs.maxAttempts)") }
        if lhs.initialDelayMilliseconds != rhs.initialDelayMilliseconds {
            differences.append(
                "\(label) initialDelay \(Self.describe(milliseconds: lhs.initialDelayMilliseconds)) vs \(Self.describe(milliseconds: rhs.initialDelayMilliseconds))"
            )
        }
        if lhs.multiplier != rhs.multiplier { differences.append("\(label) multiplier \(lhs.multiplier) vs \(rhs.multiplier)") }
        if lhs.maxDelayMilliseconds != rhs.maxDelayMilliseconds {
            differences.append(
                "\(label) maxDelay \(Self.describe(milliseconds: lhs.maxDelayMilliseconds)) vs \(Self.describe(milliseconds: rhs.maxDelayMilliseconds))"
            )
        }
    }

    private static func describe(milliseconds: Int64?) -> String {
        guard let milliseconds else { return "none" }
        return "\(milliseconds) ms"
    }

    /// The FNV-1a 64-bit hash of `bytes`, as 16 lowercase hex digits.
    static func fnv1a64Hex(_ bytes: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// A duration in whole milliseconds (rounded toward zero).
private func wholeMilliseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1000 + attoseconds / 1_000_000_000_000_000
}

/// What a store says about a definition it keeps: see ``SagaStore/definitions()``.
public struct StoredDefinitionInfo: Sendable, Hashable, Codable {
    /// The saga's name.
    public var name: String
    /// The definition's version.
    public var version: Int
    /// Its ``SagaDefinition/contentHash``.
    public var hash: String
    /// When it was first registered.
    public var registeredAt: Date

    /// Creates an entry.
    public init(name: String, version: Int, hash: String, registeredAt: Date) {
        self.name = name
        self.version = version
        self.hash = hash
        self.registeredAt = registeredAt
    }
}
