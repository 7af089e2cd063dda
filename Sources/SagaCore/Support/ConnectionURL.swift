/// A connection URL, parsed once and shared by every backend: `amqp://`, `amqps://`, `postgres://`,
/// `sqlite:`, …
///
/// ```swift
/// let url = try ConnectionURL(parsing: "amqp://user:p%40ss@h1:5672,h2:5673/%2F?heartbeat=30")
/// url.scheme                 // "amqp"
/// url.user                   // "user"
/// url.password               // "p@ss" (percent-decoded)
/// url.hosts                  // [Host(name: "h1", port: 5672), Host(name: "h2", port: 5673)]
/// url.path                   // "//" (decoded; the vhost is `url.path.dropFirst()`, "/")
/// url.queryItems             // ["heartbeat": "30"]
/// url.redacted               // "amqp://user:***@h1:5672,h2:5673/%2F?heartbeat=30"
/// ```
///
/// Accepted forms:
/// - `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?query]` — IPv6 hosts in brackets (`[::1]:5672`);
///   the host list may be empty (`sqlite:///abs/path.db`).
/// - `scheme:path[?query]` without an authority (`sqlite:relative.db`, `sqlite:/abs/path.db`).
///
/// User, password, path and query items are percent-decoded, so reserved characters in a password must be written
/// percent-encoded (`@` as `%40`, `/` as `%2F`, `:` as `%3A`, `?` as `%3F`, `#` as `%23`). Ambiguous input is
/// refused rather than guessed.
///
/// The password never leaves this value by accident: `description`, `debugDescription`, the mirror and every
/// parse error show only ``redacted`` (see ``redact(_:)``). Read ``password`` explicitly to use it.
public struct ConnectionURL: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// One host of the URL's host list, with its port when the URL names one.
    public struct Host: Sendable, Hashable, CustomStringConvertible {
        /// The host name or address; an IPv6 address without its brackets.
        public var name: String
        /// The port, when the URL names one (1...65535).
        public var port: Int?

        /// Creates a host.
        public init(name: String, port: Int? = nil) {
            self.name = name
            self.port = port
        }

        /// `name:port` (IPv6 addresses in brackets), or `name` without a port.
        public var description: String {
            let shown = name.contains(":") ? "[\(name)]" : name
            return port.map { "\(shown):\($0)" } ?? shown
        }
    }

    /// The scheme, lowercased (`amqp`, `amqps`, `postgres`, `sqlite`, …).
    public var scheme: String
    /// The percent-decoded user name, `nil` when the URL has none.
    public var user: String?
    /// The percent-decoded password, `nil` when the URL has none. Never part of `description`.
    public var password: String?
    /// The hosts, in the order written; empty when the URL has no authority or an empty one.
    public var hosts: [Host]
    /// The percent-decoded path, including its leading `/` when the URL has an authority
    /// (`amqp://h/%2F` → `"//"`, `postgres://h/db` → `"/db"`, `sqlite:///a/b.db` → `"/a/b.db"`,
    /// `sqlite:b.db` → `"b.db"`); empty when there is none. A vhost or database name is `path.dropFirst()`.
    public var path: String
    /// The percent-decoded query items; an item without `=` has the value `""`; for a repeated name the last wins.
    public var queryItems: [String: String]
    /// The URL as written, with the password replaced by `***` (see ``redact(_:)``): safe to log.
    public let redacted: String

    /// Parses a connection URL.
    ///
    /// Leading and trailing whitespace is ignored. The scheme is not checked against a list: callers check
    /// ``scheme`` themselves (and quote ``redacted`` in their errors).
    ///
    /// - Throws: ``SagaError`` with code `invalidConfiguration`. Its text quotes only the redacted URL and never
    ///   a part of it that could be a password.
    public init(parsing raw: String) throws(SagaError) {
        let text = Self.trimmed(raw)
        let redacted = Self.redact(String(text))
        self.redacted = redacted
        func failure(_ reason: String) -> SagaError {
            SagaError(
                .invalidConfiguration,
                "'\(redacted)' is not a valid connection URL: \(reason)",
                recoverySuggestion: "write scheme://user:password@host:port/path?name=value, with reserved "
                    + "characters in the user name and password percent-encoded ('@' as %40, '/' as %2F, "
                    + "':' as %3A, '?' as %3F, '#' as %23, '%' as %25)")
        }

        guard let colon = text.firstIndex(of: ":"), Self.isScheme(text[..<colon]) else {
            throw failure("it does not start with a scheme such as amqp:// or postgres://")
        }
        scheme = text[..<colon].lowercased()
        var rest = text[text.index(after: colon)...]
        if rest.contains("#") {
            throw failure("it contains a raw '#' (a fragment is not allowed; in a password write %23)")
        }
        var query: Substring = ""
        user = nil
        password = nil
        hosts = []

        if rest.hasPrefix("//") {
            rest = rest.dropFirst(2)
            let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
            var authority = rest[..<authorityEnd]
            var remainder = rest[authorityEnd...]
            if let questionMark = remainder.firstIndex(of: "?") {
                query = remainder[remainder.index(after: questionMark)...]
                remainder = remainder[..<questionMark]
            }
            if rest[authorityEnd...].contains("@") {
                // `amqp://user:pa/ss@host`: a password with a raw '/' or '?' would be read as a port and a path.
                throw failure("an '@' follows the host (in a password or path, write '@' as %40, '/' as %2F)")
            }
            if let at = authority.lastIndex(of: "@") {
                let userInfo = authority[..<at]
                authority = authority[authority.index(after: at)...]
                if let separator = userInfo.firstIndex(of: ":") {
                    guard let decodedUser = Self.percentDecoded(userInfo[..<separator]),
                        let decodedPassword = Self.percentDecoded(userInfo[userInfo.index(after: separator)...])
                    else { throw failure("the user name or password has a bad percent-encoding") }
                    user = decodedUser
                    password = decodedPassword
                } else {
                    guard let decodedUser = Self.percentDecoded(userInfo) else {
                        throw failure("the user name has a bad percent-encoding")
                    }
                    user = decodedUser
                }
            }
            if !authority.isEmpty {
                for part in authority.split(separator: ",", omittingEmptySubsequences: false) {
                    guard let host = Self.host(part) else {
                        throw failure(
                            "a host is empty or malformed, or a port is not a number in 1...65535 "
                                + "(write host:port, [ipv6]:port, several separated by commas)")
                    }
                    hosts.append(host)
                }
            }
            guard let decodedPath = Self.percentDecoded(remainder) else {
                throw failure("the path has a bad percent-encoding")
            }
            path = decodedPath
        } else {
            if let questionMark = rest.firstIndex(of: "?") {
                query = rest[rest.index(after: questionMark)...]
                rest = rest[..<questionMark]
            }
            if rest.contains("@") || redacted != text {
                throw failure("it looks like it holds credentials but has no '//' after the scheme (write scheme://user:password@host)")
            }
            guard let decodedPath = Self.percentDecoded(rest) else {
                throw failure("the path has a bad percent-encoding")
            }
            path = decodedPath
        }

        queryItems = [:]
        for item in query.split(separator: "&") {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.percentDecoded(parts[0]),
                let value = parts.count > 1 ? Self.percentDecoded(parts[1]) : ""
            else { throw failure("a query item has a bad percent-encoding") }
            guard !name.isEmpty else { throw failure("a query item has no name") }
            queryItems[name] = value
        }
    }

    /// The redacted URL.
    public var description: String { redacted }
    /// The redacted URL.
    public var debugDescription: String { "ConnectionURL(\(redacted))" }
    /// Only the redacted URL, so `dump` and debuggers show nothing secret.
    public var customMirror: Mirror { Mirror(self, children: ["redacted": redacted]) }

    /// Hashes and compares the components (including the password).
    public static func == (lhs: ConnectionURL, rhs: ConnectionURL) -> Bool {
        lhs.scheme == rhs.scheme && lhs.user == rhs.user && lhs.password == rhs.password && lhs.hosts == rhs.hosts
            && lhs.path == rhs.path && lhs.queryItems == rhs.queryItems
    }

    /// Hashes the components.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(scheme)
        hasher.combine(user)
        hasher.combine(password)
        hasher.combine(hosts)
        hasher.combine(path)
        hasher.combine(queryItems)
    }

    // MARK: Redaction

    /// Hides the password of anything that looks like a URL, well-formed or not; use it before a URL reaches a log
    /// line or an error.
    ///
    /// The rule is deliberately conservative (it hides too much rather than too little):
    /// - After `scheme://` (any number of slashes), everything between the first `:` and the **last** `@` becomes
    ///   `***`, so a password with raw `/`, `?`, `#`, `@` or `:` is hidden whole: `amqp://u:p/a@ss@h/v` →
    ///   `amqp://u:***@h/v`. Without a `:` there, the text before the `@` is kept (a user name) unless it holds
    ///   another `@` (then it is hidden too).
    /// - Without `//` after the scheme (or without a scheme), everything from the start (after `scheme:`) to the
    ///   last `@` is hidden, the user name too: `postgres:u:pw@h` → `postgres:***@h`, `amqp:/u:pw@h` → `amqp:***@h`.
    /// - Without any `@`, a `:` that is not followed by a port number (`amqp://u:secret`) hides everything after it.
    /// - A query item whose name contains `pass`, `pwd`, `secret` or `token` hides the rest of the string from its
    ///   value on.
    public static func redact(_ raw: String) -> String {
        // Query secrets first: their values may hold '@', which would move "the last '@'".
        let chars = maskSecretQueryValues(Array(raw))
        var schemeEnd: Int?
        if let colon = chars.firstIndex(of: ":"), colon > 0, isScheme(chars[..<colon]) { schemeEnd = colon + 1 }
        var start = schemeEnd ?? 0
        var hasAuthority = false
        if let schemeEnd, schemeEnd + 1 < chars.count, chars[schemeEnd] == "/", chars[schemeEnd + 1] == "/" {
            hasAuthority = true
            start = schemeEnd
            while start < chars.count, chars[start] == "/" { start += 1 }
        }
        let hidden = Array("***")
        var result = chars
        if let lastAt = chars[start...].lastIndex(of: "@") {
            if hasAuthority, let colon = chars[start..<lastAt].firstIndex(of: ":") {
                result = Array(chars[...colon]) + hidden + Array(chars[lastAt...])
            } else if hasAuthority, !chars[start..<lastAt].contains("@") {
                result = chars  // a user name without a password
            } else {
                result = Array(chars[..<start]) + hidden + Array(chars[lastAt...])
            }
        } else if let colon = firstNonPortColon(chars, from: start) {
            result = Array(chars[..<(hasAuthority ? colon + 1 : start)]) + hidden
        }
        return String(result)
    }

    /// The first `:` in the authority (up to the first `/`, `?` or `#`) that is not followed by a port number.
    private static func firstNonPortColon(_ chars: [Character], from start: Int) -> Int? {
        var index = start
        var inBrackets = false
        while index < chars.count {
            let char = chars[index]
            if char == "/" || char == "?" || char == "#" { return nil }
            if char == "[" { inBrackets = true }
            if char == "]" { inBrackets = false }
            if char == ":" && !inBrackets {
                var end = index + 1
                while end < chars.count, !",/?#".contains(chars[end]) { end += 1 }
                let port = chars[(index + 1)..<end]
                if port.isEmpty || !port.allSatisfy({ $0.isASCII && $0.isNumber }) { return index }
                index = end
                continue
            }
            index += 1
        }
        return nil
    }

    /// Cuts the text after the `=` of the first query-like item (`?name=`, `&name=`, `;name=`) whose name looks
    /// like a secret, and appends `***`.
    private static func maskSecretQueryValues(_ chars: [Character]) -> [Character] {
        var index = 0
        while index < chars.count {
            defer { index += 1 }
            guard chars[index] == "?" || chars[index] == "&" || chars[index] == ";" else { continue }
            var end = index + 1
            while end < chars.count, !"=?&;#/@".contains(chars[end]) { end += 1 }
            guard end < chars.count, chars[end] == "=" else { continue }
            if isSecretName(String(chars[(index + 1)..<end])) {
                return Array(chars[...end]) + Array("***")
            }
        }
        return chars
    }

    /// Whether a query item's name looks like it holds a secret.
    private static func isSecretName(_ name: String) -> Bool {
        let lowered = name.lowercased()
        return ["pass", "pwd", "secret", "token"].contains { lowered.contains($0) }
    }

    // MARK: Parsing helpers

    private static func isScheme<C: Collection<Character>>(_ text: C) -> Bool {
        guard let first = text.first, first.isASCII, first.isLetter else { return false }
        return text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == ".") }
    }

    private static func trimmed(_ text: String) -> Substring {
        var slice = Substring(text)
        while let first = slice.first, first.isWhitespace { slice.removeFirst() }
        while let last = slice.last, last.isWhitespace { slice.removeLast() }
        return slice
    }

    private static func host(_ text: Substring) -> Host? {
        var name: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            name = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = text.firstIndex(of: ":") {
            name = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            name = text
        }
        guard !name.isEmpty, !name.contains(where: { $0.isWhitespace || $0 == "@" || $0 == "%" }) else { return nil }
        guard let portText else { return Host(name: String(name)) }
        guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(portText), (1...65535).contains(port)
        else { return nil }
        return Host(name: String(name), port: port)
    }

    /// Decodes `%XX` sequences; `nil` for a `%` not followed by two hex digits.
    private static func percentDecoded(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(hexValue), let low = utf8.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
