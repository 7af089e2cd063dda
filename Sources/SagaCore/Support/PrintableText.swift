/// Text from outside the process (a message's saga id, a dead letter's body, a header) made safe
/// to print on one line of a log or a terminal: control characters (C0, DEL, C1), line and
/// paragraph separators and the bidirectional overrides become visible escapes (`\n`, `\u{1B}`),
/// so nothing a publisher sends can start a forged log line, move a terminal's cursor or colour
/// its output, or reorder what an operator reads. Other text is unchanged.
public enum PrintableText {
    /// `text` with every character that could change how a line prints escaped.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var result = ""
        result.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            guard needsEscape(scalar) else {
                result.unicodeScalars.append(scalar)
                continue
            }
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default: result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            }
        }
        return result
    }

    /// Whether `text` holds a character ``escaped(_:)`` would escape.
    public static func needsEscaping(_ text: some StringProtocol) -> Bool {
        text.unicodeScalars.contains(where: needsEscape)
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        // Line and paragraph separators; left-to-right/right-to-left embeddings, overrides and isolates.
        case 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }
}
