/// Vouches for the copies of saga states that commands carry, so that a participant can use a
/// command's copy instead of loading the saga (see `SagaTopology.stateInCommands` in
/// Participant), and nobody who can only publish to the broker can make a handler run on a state
/// of their making.
///
/// A store gives one (``SagaStore/stateSeal``) when every process of the store can share its key:
/// `PostgresSagaStore` keeps a random key in its schema and seals with HMAC-SHA-256. A copy
/// whose seal does not verify is ignored: the participant loads the saga as it would without one.
public protocol SagaStateSeal: Sendable {
    /// The seal of `bytes`, or `nil` when none can be made now (for example before the store has
    /// read its key): the command then carries no copy.
    func seal(_ bytes: [UInt8]) -> String?

    /// Whether `seal` was made for exactly `bytes` with this seal's key (by any process sharing
    /// it). Compares in constant time.
    func verifies(_ seal: String, of bytes: [UInt8]) -> Bool
}

/// A saga's state as the text a command carries (see ``SagaStateSeal``): a JSON object with the
/// state's fields, times in Unix milliseconds as the stores keep them, so that a copy reads back
/// as the saga the store would load.
package enum SagaStateCopy {
    /// The JSON text of `state`.
    package static func json(_ state: SagaState) throws -> [UInt8] {
        var writer = JSONWriter(escapingSlashes: false, capacity: 512 + 200 * state.history.count)
        writer.beginObject()
        writer.key("attempt")
        writer.write(state.attempt)
        writer.key("context")
        writer.write(state.context)
        writer.key("createdAt")
        writer.write(StoreCoding.milliseconds(state.createdAt))
        writer.key("currentStep")
        writer.write(state.currentStep)
        if let deadline = state.deadline {
            writer.key("deadline")
            writer.write(StoreCoding.milliseconds(deadline))
        }
        if let reason = state.failureReason {
            writer.key("failureReason")
            writer.write(reason)
        }
        writer.key("history")
        StoreCoding.write(state.history, into: &writer)
        writer.key("id")
        writer.write(state.id)
        writer.key("name")
        writer.write(state.name)
        writer.key("payload")
        try writer.write(state.payload)
        writer.key("reapAttempts")
        writer.write(state.reapAttempts)
        writer.key("status")
        writer.write(state.status.rawValue)
        writer.key("updatedAt")
        writer.write(StoreCoding.milliseconds(state.updatedAt))
        writer.key("version")
        writer.write(state.version)
        writer.endObject()
        return writer.bytes
    }

    /// Reads a state written by ``json(_:)``.
    /// - Throws: ``JSONSyntaxError`` or ``JSONFieldError``.
    package static func state(from bytes: some Collection<UInt8>) throws -> SagaState {
        try state(from: JSONFields(JSONReader.value(from: bytes)))
    }

    /// Reads a state written by ``json(_:)`` and parsed already (a copy a command's body carries).
    /// - Throws: ``JSONFieldError``.
    package static func state(from object: JSONObject) throws -> SagaState {
        try state(from: JSONFields(object))
    }

    private static func state(from fields: JSONFields) throws -> SagaState {
        guard case .object(let payload)? = fields.object["payload"] else {
            throw JSONFieldError.wrongType("payload", expected: "object")
        }
        guard case .object(let contextFields)? = fields.object["context"] else {
            throw JSONFieldError.wrongType("context", expected: "object")
        }
        let context = JSONFields(contextFields)
        var strings: [String: String] = [:]
        strings.reserveCapacity(contextFields.count)
        for key in contextFields.keys { strings[key] = try context.string(key) }
        return SagaState(
            id: try fields.string("id"), name: try fields.string("name"),
            status: try fields.value("status", as: SagaStatus.self), currentStep: try fields.int("currentStep"),
            attempt: try fields.int("attempt"), payload: payload, context: strings,
            history: try StoreCoding.history(from: fields.object["history"] ?? .null, at: "history"),
            failureReason: try fields.optionalString("failureReason"),
            deadline: try fields.optionalInt64("deadline").map(StoreCoding.date(milliseconds:)),
            reapAttempts: try fields.int("reapAttempts"),
            createdAt: StoreCoding.date(milliseconds: try fields.int64("createdAt")),
            updatedAt: StoreCoding.date(milliseconds: try fields.int64("updatedAt")), version: try fields.int64("version"))
    }
}
