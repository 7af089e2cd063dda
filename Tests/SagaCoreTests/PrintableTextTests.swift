import SagaCore
import Testing

@Suite("Printable text")
struct PrintableTextTests {
    @Test(arguments: [
        ("o-17", "o-17"),
        ("Zürich → 東京", "Zürich → 東京"),
        ("x\n05:00:00.000 ERROR FAKE", #"x\n05:00:00.000 ERROR FAKE"#),
        ("red\u{1B}[31m", #"red\u{1B}[31m"#),
        ("a\r\tb\u{0}c\u{7F}d\u{85}e", #"a\r\tb\u{0}c\u{7F}d\u{85}e"#),
        ("abc\u{202E}fed\u{2066}", #"abc\u{202E}fed\u{2066}"#),
        ("line\u{2028}sep", #"line\u{2028}sep"#),
    ])
    func controlCharactersBecomeVisibleEscapes(text: String, printed: String) {
        #expect(PrintableText.escaped(text) == printed)
        #expect(PrintableText.needsEscaping(text) == (text != printed))
        #expect(!printed.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F })
    }
}
