/// Text from outside the process (a message's saga id, a dead letter's body, a header) made safe
/// to print on one line of a log or a terminal: control characters (C0, DEL, C1), line and
/// paragraph separators and the bidirectional overrides become visible escapes (`\n`, `\u{1B}`),
/// so nothing a publisher sends can start a forged log line, move a terminal's cursor or colour
/// its output, or reorder what an operator reads. Other text is unchanged.
public enum PrintableText {
    /// `text` with every character that could change how a line prints escaped.
    public static func escaped(_ text: String) -> String {
        guard needsEscaping(text) else { return text }
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

    /// Whether `text` holds a character ``escaped(_:)`` would escape. Printable ASCII, the usual
    /// case (every saga id and log line), is told by its bytes alone.
    public static func needsEscaping(_ text: some StringProtocol) -> Bool {
        // Every character to escape is a control byte, DEL, or starts with a lead byte ≥ 0xC2.
        guard text.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F || $0 >= 0xC2 }) else { return false }
        return text.unicodeScalars.contains(where: needsEscape)
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
