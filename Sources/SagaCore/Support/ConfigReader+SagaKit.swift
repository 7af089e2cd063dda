public import Configuration

/// Typed reads that fail loudly.
///
/// swift-configuration's `int(forKey:default:)` falls back to the default when a value is present
/// but not a number. A misspelt setting must not be ignored silently, so SagaKit's configuration
/// initialisers read through these helpers: a missing value gives the default, a malformed one
/// throws `invalidConfiguration` naming the key and what it must be.
extension ConfigReader {
    /// A whole number in `range`, or `defaultValue` when the key is absent.
    /// - Throws: `invalidConfiguration` when the value is not a whole number in `range`.
    public func sagaInt(_ key: ConfigKey, default defaultValue: Int, in range: ClosedRange<Int> = 1...Int.max) throws -> Int {
        guard let text = string(forKey: key) else { return defaultValue }
        guard let value = Int(text.trimmed), range.contains(value) else {
            throw invalidValue(key, mustBe: "a whole number \(Self.describe(range))", not: text)
        }
        return value
    }

    /// A duration given in (possibly fractional) seconds, or `defaultValue` when absent.
    /// - Throws: `invalidConfiguration` when the value is not a number of seconds greater than 0.
    public func sagaSeconds(_ key: ConfigKey, default defaultValue: Duration) throws -> Duration {
        guard let text = string(forKey: key) else { return defaultValue }
        guard let seconds = Double(text.trimmed), seconds > 0, seconds.isFinite else {
            throw invalidValue(key, mustBe: "a number of seconds greater than 0", not: text)
        }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// A duration in (possibly fractional) seconds that can be turned off: `off` or any zero is
    /// `nil`; `defaultValue` when the key is absent.
    /// - Throws: `invalidConfiguration` when the value is neither `off` nor a number of seconds
    ///   of 0 or more.
    public func sagaSecondsOrOff(_ key: ConfigKey, default defaultValue: Duration?) throws -> Duration? {
        guard let text = string(forKey: key) else { return defaultValue }
        let trimmed = text.trimmed.lowercased()
        if trimmed == "off" || Double(trimmed) == 0 { return nil }
        guard let seconds = Double(trimmed), seconds > 0, seconds.isFinite else {
            throw invalidValue(key, mustBe: "a number of seconds greater than 0, or 0 or off for none", not: text)
        }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// One of `choices` (compared case-insensitively), or `defaultValue` when absent.
    /// - Throws: `invalidConfiguration` listing the choices.
    public func sagaChoice(_ key: ConfigKey, default defaultValue: String, choices: [String]) throws -> String {
        guard let text = string(forKey: key) else { return defaultValue }
        guard let match = choices.first(where: { $0.lowercased() == text.lowercased() }) else {
            throw invalidValue(key, mustBe: "one of \(choices.joined(separator: ", "))", not: text)
        }
        return match
    }

    /// The error of a malformed value: what `key` must be, and what it was.
    private func invalidValue(_ key: ConfigKey, mustBe expectation: String, not text: String) -> SagaError {
        SagaError(
            .invalidConfiguration, "configuration value \(sagaDescribe(key)) must be \(expectation), not '\(text)'",
            recoverySuggestion: "fix or remove the setting")
    }

    /// `key` as a person sets it: its full key (this reader's scope, then the key) and the
    /// environment variable it is read from — `'sagakit.store.url' (environment variable
    /// SAGAKIT_STORE_URL)` — so that an error names what to set, whichever scope the service
    /// reads the setting from.
    public func sagaDescribe(_ key: ConfigKey) -> String {
        let full = sagaFullKey(key)
        return "'\(full.components.joined(separator: "."))' (environment variable \(Self.environmentName(full)))"
    }

    /// The full key `key` is read from by this reader: its scope's prefix, then `key`.
    ///
    /// swift-configuration keeps a scoped reader's prefix to itself but for its description
    /// (`ConfigReader[keyPrefix: sagakit.store, providers: …]`), which is read here; when that
    /// text does not have this form, `key` alone is returned.
    public func sagaFullKey(_ key: ConfigKey) -> ConfigKey {
        let text = description
        let marker = "ConfigReader[keyPrefix: "
        guard text.hasPrefix(marker), let end = text.range(of: ", providers: ") else { return key }
        let prefix = text[text.index(text.startIndex, offsetBy: marker.count)..<end.lowerBound]
        guard !prefix.isEmpty, !prefix.contains(where: { $0.isWhitespace || "[]()=".contains($0) }) else { return key }
        return ConfigKey(prefix.split(separator: ".").map(String.init) + key.components)
    }

    /// The environment variable a key is read from by `EnvironmentVariablesProvider`
    /// (`sagakit.reaper.poll.seconds` → `SAGAKIT_REAPER_POLL_SECONDS`).
    public static func environmentName(_ key: ConfigKey) -> String {
        key.components.joined(separator: "_").uppercased()
    }

    private static func describe(_ range: ClosedRange<Int>) -> String {
        switch (range.lowerBound, range.upperBound) {
        case (let low, Int.max): "of at least \(low)"
        case (let low, let high): "from \(low) to \(high)"
        }
    }
}

extension String {
    fileprivate var trimmed: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
