import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// Who may act, and the checks every action passes.
///
/// Read-only unless an operator token is configured. With one, an operator logs in with the
/// token and a name (recorded in the history of every saga they act on); the console then keeps
/// a session in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` over HTTPS), and every action
/// must carry the session's CSRF token in its form and come from the console's own origin
/// (`Origin`, else `Referer`). With read access ``SagaConsoleReadAccess/operators`` the pages
/// need a session too. On a loopback address the `Host` header must name a loopback host too
/// (no DNS rebinding).
final class ConsoleSecurity: Sendable {
    static let cookieName = "saga_console_session"
    static let sessionLifetime: TimeInterval = 12 * 3600

    struct Session: Sendable {
        var name: String
        var csrf: String
        var createdAt: Date
    }

    private let token: [UInt8]?
    private let loopbackOnly: Bool
    private let readersMustLogIn: Bool
    private let alwaysSecureCookies: Bool
    private let sessions = Mutex<[String: Session]>([:])

    init(configuration: SagaConsoleConfiguration) {
        token = configuration.operatorToken.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        loopbackOnly = configuration.listensOnLoopbackOnly
        readersMustLogIn = configuration.readAccess == .operators
        alwaysSecureCookies = configuration.secureCookies
    }

    var actionsEnabled: Bool { token != nil }

    /// The paths anyone who can reach the console may read whatever the read access: the login
    /// page, the assets it needs, the health probes and `/metrics` (counts, no saga data).
    static func isOpen(_ path: String) -> Bool {
        path == "/login" || path == "/logout" || path == "/metrics" || path.hasPrefix("/assets/") || path.hasPrefix("/health/")
    }

    /// Whether the request may read `path`: always, unless readers must log in and it has no
    /// live session.
    func mayRead(_ request: Request) -> Bool {
        !readersMustLogIn || Self.isOpen(request.uri.path) || session(of: request) != nil
    }

    /// Whether the session cookie is marked `Secure`: always when configured so, else when the
    /// request came over HTTPS through a proxy that says so.
    func cookieIsSecure(for request: Request) -> Bool {
        alwaysSecureCookies || Self.cameOverHTTPS(request)
    }

    /// `X-Forwarded-Proto: https` or `Forwarded: …proto=https…` (the console itself speaks
    /// plain HTTP: HTTPS ends at a proxy in front of it).
    static func cameOverHTTPS(_ request: Request) -> Bool {
        if let proto = request.headers[HTTPField.Name("X-Forwarded-Proto")!] {
            return proto.split(separator: ",").first?.trimmingCharacters(in: .whitespaces).lowercased() == "https"
        }
        if let forwarded = request.headers[HTTPField.Name("Forwarded")!] {
            let first = forwarded.split(separator: ",").first ?? ""
            return first.split(separator: ";").contains {
                $0.trimmingCharacters(in: .whitespaces).lowercased().replacingOccurrences(of: "\"", with: "") == "proto=https"
            }
        }
        return false
    }

    /// Compares in time independent of where the first difference is.
    func tokenMatches(_ candidate: String) -> Bool {
        guard let token else { return false }
        let given = Array(candidate.utf8)
        var difference = UInt8(given.count == token.count ? 0 : 1)
        for index in 0..<token.count {
            difference |= token[index] ^ (index < given.count ? given[index] : 0)
        }
        return difference == 0
    }

    /// Starts a session for `name`; returns the cookie value.
    func startSession(name: String, now: Date = Date()) -> String {
        let id = Self.randomToken()
        sessions.withLock { sessions in
            sessions = sessions.filter { now.timeIntervalSince($0.value.createdAt) < Self.sessionLifetime }
            sessions[id] = Session(name: name, csrf: Self.randomToken(), createdAt: now)
        }
        return id
    }

    func endSession(_ id: String) {
        _ = sessions.withLock { $0.removeValue(forKey: id) }
    }

    /// The request's session, if it has a live one.
    func session(of request: Request, now: Date = Date()) -> Session? {
        guard token != nil, let id = request.cookies[Self.cookieName]?.value else { return nil }
        return sessions.withLock { sessions in
            guard let session = sessions[id], now.timeIntervalSince(session.createdAt) < Self.sessionLifetime else { return nil }
            return session
        }
    }

    /// Whether the `Host` header is acceptable (any, unless the console listens on loopback).
    func hostAllowed(_ request: Request) -> Bool {
        guard loopbackOnly else { return true }
        guard let authority = request.head.authority else { return false }
        return SagaConsoleConfiguration.isLoopback(Self.hostName(of: authority))
    }

    /// `127.0.0.1` of `127.0.0.1:8080`, `::1` of `[::1]:8080`.
    static func hostName(of authority: String) -> String {
        if authority.hasPrefix("["), let end = authority.firstIndex(of: "]") {
            return String(authority[authority.index(after: authority.startIndex)..<end])
        }
        return String(authority.split(separator: ":", maxSplits: 1).first ?? "")
    }

    /// Whether a state-changing request comes from the console's own pages: its `Origin` (or,
    /// without one, its `Referer`) is this host.
    func sameOrigin(_ request: Request) -> Bool {
        guard let host = request.head.authority else { return false }
        let own = ["http://\(host)", "https://\(host)"]
        if let origin = request.headers[.origin] {
            return own.contains(origin)
        }
        if let referer = request.headers[.referer] {
            return own.contains { referer == $0 || referer.hasPrefix($0 + "/") }
        }
        return false
    }

    /// Checks an action: actions enabled, a live session, the form's CSRF token, same origin.
    /// Returns the session, or why the action is refused.
    func authorize(_ request: Request, form: [String: String]) -> Result<Session, ConsoleRefusal> {
        guard actionsEnabled else {
            return .failure(
                ConsoleRefusal(
                    status: .forbidden,
                    message:
                        "the console is read-only: start it with --token-file <file> or SAGAKIT_CONSOLE_TOKEN to let operators act"))
        }
        guard sameOrigin(request) else {
            return .failure(
                ConsoleRefusal(status: .forbidden, message: "refused: the request did not come from this console's pages (Origin/Referer)"))
        }
        guard let session = session(of: request) else {
            return .failure(
                ConsoleRefusal(status: .unauthorized, message: "log in with the operator token first (the session may have expired)"))
        }
        guard let csrf = form["csrf"], csrf == session.csrf else {
            return .failure(
                ConsoleRefusal(
                    status: .forbidden, message: "refused: the form's CSRF token is missing or stale; reload the page and try again"))
        }
        return .success(session)
    }

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}

/// Why an action was refused, for the page that says so.
struct ConsoleRefusal: Error {
    var status: HTTPResponse.Status
    var message: String
}

/// Parses an `application/x-www-form-urlencoded` body.
func parseForm(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for pair in text.split(separator: "&") {
        let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        func decode(_ part: Substring) -> String {
            String(part).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(part)
        }
        guard let key = parts.first else { continue }
        result[decode(key)] = parts.count > 1 ? decode(parts[1]) : ""
    }
    return result
}
