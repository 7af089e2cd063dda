extension SagaCommand {
    /// The command as a message body: the JSON text of its `Codable` form (keys sorted),
    /// written without `JSONEncoder`.
    package var jsonBytes: [UInt8] { jsonBytes(stateCopy: nil) }

    /// The command as a message body that also carries a sealed copy of its saga's state: the
    /// copy's JSON text, exactly as it was sealed, under `state` and its seal under `stateSeal`
    /// (see ``SagaCommandBody``). Without a copy, the same text as ``jsonBytes``.
    package func jsonBytes(stateCopy: (json: [UInt8], seal: String)?) -> [UInt8] {
        var writer = JSONWriter(capacity: 160 + (stateCopy.map { $0.json.count + $0.seal.utf8.count + 24 } ?? 0))
        writer.beginObject()
        writer.key("attempt")
        writer.write(attempt)
        writer.key("command")
        writer.write(command)
        writer.key("phase")
        writer.write(phase.rawValue)
        writer.key("sagaID")
        writer.write(sagaID)
        writer.key("sagaName")
        writer.write(sagaName)
        if let stateCopy {
            writer.key("state")
            writer.write(json: stateCopy.json)
            writer.key("stateSeal")
            writer.write(stateCopy.seal)
        }
        writer.key("step")
        writer.write(step)
        writer.key("stepName")
        writer.write(stepName)
        writer.endObject()
        return writer.bytes
    }

    /// Reads a command from a message body, as its `Codable` form reads it (other keys ignored).
    /// - Throws: ``JSONSyntaxError`` or ``JSONFieldError``.
    package init(jsonBytes: some Collection<UInt8>) throws {
        try self.init(JSONFields(JSONValue(parsing: jsonBytes)))
    }

    /// Reads a command from the fields of a body.
    fileprivate init(_ fields: JSONFields) throws {
        self.init(
            sagaID: try fields.string("sagaID"), sagaName: try fields.string("sagaName"), command: try fields.string("command"),
            step: try fields.int("step"), stepName: try fields.string("stepName"), phase: try fields.value("phase", as: StepPhase.self),
            attempt: try fields.int("attempt"))
    }
}

/// A command message's body as its receiver reads it: the command and, when the body carries
/// one, the sealed copy of its saga's state (`state` and `stateSeal`, see
/// ``SagaCommand/jsonBytes(stateCopy:)``).
///
/// The copy is optional in every sense: a body without one, or with one that is not an object
/// with a string seal, is the command alone, and its receiver loads the saga.
package struct SagaCommandBody: Sendable {
    /// The copy of the saga's state a body carries.
    package struct StateCopy: Sendable {
        /// The copy's JSON text exactly as the body carries it: what the seal was made for.
        package let json: [UInt8]
        /// The copy, parsed.
        package let value: JSONObject
        /// The seal of ``json``.
        package let seal: String

        /// The bytes the copy takes in the body as ``SagaCommand/jsonBytes(stateCopy:)`` writes
        /// it: its text, its seal and their keys (`,"state":` and `,"stateSeal":""`).
        package var bytesInBody: Int { json.count + seal.utf8.count + 24 }
    }

    /// The command.
    package let command: SagaCommand
    /// The copy of the saga's state; `nil` when the body has none.
    package let stateCopy: StateCopy?

    /// Reads a body, parsing it once (the copy's text is located while parsing, not parsed again).
    /// - Throws: ``JSONSyntaxError`` or ``JSONFieldError`` when it is not a command.
    package init(jsonBytes bytes: [UInt8]) throws {
        let (value, member) = try bytes.withUnsafeBytes { buffer in
            try JSONReader.value(from: buffer, locatingMember: "state")
        }
        let fields = try JSONFields(value)
        command = try SagaCommand(fields)
        if let member, case .object(let copy)? = fields.object["state"], case .string(let seal)? = fields.object["stateSeal"] {
            stateCopy = StateCopy(json: Array(bytes[member]), value: copy, seal: seal)
        } else {
            stateCopy = nil
        }
    }
}
