import Foundation
public import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A swift-log handler that writes one readable line per message to standard error:
///
/// ```
/// 12:04:31.207 INFO  inventory  saga started  saga.id=o-17 saga.name=order
/// ```
///
/// Colours are used when standard error is a terminal. Metadata keys are sorted, so lines of one
/// saga are easy to scan.
public struct ConsoleLogHandler: LogHandler {
    /// Metadata attached to every line of this logger.
    public var metadata: Logger.Metadata = [:]
    /// The lowest level written.
    public var logLevel: Logger.Level
    private let label: String
    private let colors: Bool

    /// Creates a handler.
    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
        self.colors = isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
    }

    /// Makes this handler the process's logging backend. Call once, at the start of `main`.
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in ConsoleLogHandler(label: label, level: level) }
    }

    /// Metadata by key.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    // swift-format-ignore: AllPublicDeclarationsHaveDocumentation
    public func log(event: LogEvent) {
        var bytes = Array(line(for: event).utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }

    /// The line written for `event`, its newline included.
    package func line(for event: LogEvent) -> String {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        var line = Self.timestamp()
        line += " " + levelText(event.level)
        // One event, one line: text from outside (a saga id, a dead letter's reason) cannot start
        // a forged line or send escape sequences to the terminal.
        line += "  " + label + "  " + PrintableText.escaped("\(event.message)")
        if !all.isEmpty {
            let pairs = all.sorted { $0.key < $1.key }.map { PrintableText.escaped("\($0.key)=\($0.value)") }.joined(separator: " ")
            line += colors ? "  \u{1B}[2m\(pairs)\u{1B}[0m" : "  " + pairs
        }
        return line + "\n"
    }

    private func levelText(_ level: Logger.Level) -> String {
        let name = level.rawValue.uppercased().padding(toLength: 5, withPad: " ", startingAt: 0)
        guard colors else { return name }
        let code =
            switch level {
            case .trace, .debug: "2"
            case .info: "32"
            case .notice: "36"
            case .warning: "33"
            case .error, .critical: "31"
            }
        return "\u{1B}[\(code)m\(name)\u{1B}[0m"
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        let millis = Int(now.tv_nsec / 1_000_000)
        return String(format: "%02d:%02d:%02d.%03d", Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), millis)
    }
}
