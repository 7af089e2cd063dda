import Foundation
package import Participant

/// Small helpers for server-rendered HTML: every text that comes from data goes through
/// ``escape(_:)``.
enum HTML {
    /// Escapes text for an HTML element or a quoted attribute.
    static func escape(_ text: String) -> String {
        var result = ""
        result.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            case "'": result += "&#39;"
            default: result.append(character)
            }
        }
        return result
    }

    /// Percent-encodes a path segment or query value.
    static func urlComponent(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// A status as a coloured badge.
    static func badge(_ status: SagaStatus) -> String {
        "<span class=\"badge st-\(status.consoleName)\">\(status.consoleName)</span>"
    }

    /// A duration for people: `850 µs`, `35 ms`, `1.24 s`, `2 min 5 s`.
    static func seconds(_ seconds: Double) -> String {
        switch seconds {
        case ..<0.001: String(format: "%.0f µs", seconds * 1_000_000)
        case ..<0.01: String(format: "%.1f ms", seconds * 1000)
        case ..<1: String(format: "%.0f ms", seconds * 1000)
        case ..<120: String(format: "%.2f s", seconds)
        case ..<7200: "\(Int(seconds) / 60) min \(Int(seconds) % 60) s"
        default: "\(Int(seconds) / 3600) h \(Int(seconds) % 3600 / 60) min"
        }
    }

    /// An ISO 8601 time with milliseconds.
    static func time(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// A link to a saga's page.
    static func sagaLink(_ id: String) -> String {
        "<a class=\"mono\" href=\"/sagas/\(urlComponent(id))\">\(escape(id))</a>"
    }

    /// A table.
    static func table(_ header: [String], _ rows: [[String]], classes: String = "") -> String {
        var html = "<table class=\"\(classes)\"><thead><tr>"
        for cell in header { html += "<th>\(escape(cell))</th>" }
        html += "</tr></thead><tbody>"
        for row in rows {
            html += "<tr>" + row.map { "<td>\($0)</td>" }.joined() + "</tr>"
        }
        return html + "</tbody></table>"
    }
}

extension SagaStatus {
    /// The status as the console and the CLI print it: `needs-attention`.
    var consoleName: String { self == .needsAttention ? "needs-attention" : rawValue }

    /// Parses `running`, `needs-attention`, `needsAttention`.
    init?(consoleName: String) {
        let wanted = consoleName.lowercased().replacingOccurrences(of: "-", with: "").replacingOccurrences(of: "_", with: "")
        guard let status = SagaStatus.allCases.first(where: { $0.rawValue.lowercased() == wanted }) else { return nil }
        self = status
    }
}

/// Shows listed payload keys as `••••`, at any depth, and keys whose names look secret unless
/// told not to: the console's pages and the `saga` commands that print payloads or message
/// bodies (`--redact`, `SAGAKIT_REDACT`, `SAGAKIT_REDACT_DEFAULTS`).
package struct Redactor: Sendable {
    /// The mask shown instead of a value.
    package static let mask = "••••"
    /// The keys masked, compared exactly.
    package let keys: Set<String>
    /// Whether keys whose names look secret (``looksSecret(_:)``) are masked too.
    package let masksSecretLookingKeys: Bool

    package init(keys: Set<String>, masksSecretLookingKeys: Bool = true) {
        self.keys = keys
        self.masksSecretLookingKeys = masksSecretLookingKeys
    }

    /// The keys of a comma-separated list (`cardNumber, email`), blanks dropped.
    package init(list: [String], masksSecretLookingKeys: Bool = true) {
        self.init(
            keys: Set(list.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }),
            masksSecretLookingKeys: masksSecretLookingKeys)
    }

    /// Parts of names that mark a secret (compared without case, `_` and `-`): `password`,
    /// `client_secret`, `accessToken`, `api-key`, `cardNumber`, `cvv`… A non-secret key that
    /// contains one is masked too: safe, and `SAGAKIT_REDACT_DEFAULTS=false` turns this off.
    package static let secretNameParts = [
        "passw", "passphrase", "secret", "token", "apikey", "privatekey", "authorization", "credential", "cardnumber", "cvv", "cvc",
    ]
    /// Whole names that mark a secret (compared the same way).
    package static let secretNames: Set<String> = ["pin", "ssn", "iban", "otp"]

    /// Whether a key's name looks like it holds a secret.
    package static func looksSecret(_ key: String) -> Bool {
        let name = key.lowercased().filter { $0 != "_" && $0 != "-" }
        return secretNames.contains(name) || secretNameParts.contains { name.contains($0) }
    }

    /// Whether the value under `key` is masked.
    package func masks(_ key: String) -> Bool {
        keys.contains(key) || (masksSecretLookingKeys && Self.looksSecret(key))
    }

    /// Whether nothing is masked.
    package var masksNothing: Bool { keys.isEmpty && !masksSecretLookingKeys }

    package func redact(_ object: JSONObject) -> JSONObject {
        var result = JSONObject()
        for (key, value) in object {
            result[key] = masks(key) ? .string(Self.mask) : redact(value)
        }
        return result
    }

    package func redact(_ value: JSONValue) -> JSONValue {
        switch value {
        case .object(let object): .object(redact(object))
        case .array(let array): .array(array.map(redact))
        default: value
        }
    }

    /// Context values under a listed key are masked too.
    package func redact(_ context: [String: String]) -> [String: String] {
        context.reduce(into: [:]) { result, entry in result[entry.key] = masks(entry.key) ? Self.mask : entry.value }
    }

    /// A saga's payload and context, redacted.
    package func redact(_ state: SagaState) -> SagaState {
        guard !masksNothing else { return state }
        var redacted = state
        redacted.payload = redact(state.payload)
        redacted.context = redact(state.context)
        return redacted
    }

    /// A whole message body: JSON is redacted key by key (and comes back compact, keys sorted);
    /// other text is shown unless the operator listed keys to redact (it cannot be searched for
    /// keys: SagaKit's own messages are JSON, so such a body comes from elsewhere). Redact before
    /// shortening a body: a shortened one is no longer JSON.
    package func redact(body: [UInt8]) -> String {
        guard !masksNothing else { return String(decoding: body, as: UTF8.self) }
        guard let value = try? JSONCoding.decode(JSONValue.self, from: Data(body)) else {
            return keys.isEmpty
                ? String(decoding: body, as: UTF8.self) : "(not shown: the body is not JSON, and payload keys are redacted)"
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(redact(value))).map { String(decoding: $0, as: UTF8.self) } ?? "?"
    }

    /// Pretty JSON with sorted keys.
    package static func pretty(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "?"
    }
}
