import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Participant

/// The console's routes: pages (GET), actions (POST, checked by ``ConsoleSecurity``), the
/// assets and the server-sent events.
/// The store did not answer a `/metrics` scrape in time.
struct StoreMetricsTimedOut: Error, CustomStringConvertible {
    var description: String { "no answer within \(ConsoleRoutes.metricsPatience)" }
}

struct ConsoleRoutes: Sendable {
    /// How long `/metrics` waits for the store.
    static let metricsPatience: Duration = .seconds(8)

    let pages: Pages
    let security: ConsoleSecurity
    let broadcaster: EventBroadcaster
    let backend: SagaConsoleBackend
    let logger: Logger
    let health: ConsoleHealth
    /// The counts `/metrics` serves, the finished sagas' recounted every 5 minutes.
    let counts = SagaCountCache()

    func register(on router: Router<BasicRequestContext>) {
        router.get("/") { request, _ in
            await page(request) { session in try await pages.overview(session: session) }
        }
        router.get("/sagas") { request, _ in
            await page(request) { session in try await pages.list(query: Self.query(request), session: session) }
        }
        router.get("/sagas/:id") { request, context in
            let id = try context.parameters.require("id")
            return await page(request) { session in
                try await pages.saga(id, session: session, flash: Self.flash(Self.query(request)["done"]?.last))
            }
        }
        router.get("/definitions") { request, _ in
            await page(request) { session in try await pages.definitions(session: session) }
        }
        router.get("/definitions/:name") { request, context in
            let name = try context.parameters.require("name")
            let version = Self.query(request)["version"]?.last.flatMap { Int($0) }
            return await page(request) { session in try await pages.definition(name, version: version, session: session) }
        }
        router.get("/services") { request, _ in
            await page(request) { session in try await pages.services(session: session) }
        }
        router.get("/dlq") { request, _ in
            await page(request) { session in
                try await pages.deadLetters(session: session, flash: Self.flash(Self.query(request)["done"]?.last))
            }
        }
        router.get("/login") { request, _ in
            html(pages.login(session: security.session(of: request), next: Self.safeNext(Self.query(request)["next"]?.last)))
        }
        router.post("/login") { request, _ in
            try await login(request)
        }
        router.post("/logout") { request, _ in
            let form = try await Self.form(request)
            if case .success = security.authorize(request, form: form), let id = request.cookies[ConsoleSecurity.cookieName]?.value {
                security.endSession(id)
            }
            var response = Self.redirect("/")
            response.setCookie(sessionCookie("", maxAge: 0, for: request))
            return response
        }
        router.post("/sagas/:id/retry") { request, context in
            let id = try context.parameters.require("id")
            return try await act(request, back: "/sagas/\(HTML.urlComponent(id))") { session, form in
                let reason = try Self.reason(form)
                _ = try await backend.retry(id, session.name, reason)
                logger.notice("console: retry requested", metadata: ["saga.id": "\(id)", "operator": "\(session.name)"])
                return "/sagas/\(HTML.urlComponent(id))?done=retry"
            }
        }
        router.post("/sagas/:id/compensate") { request, context in
            let id = try context.parameters.require("id")
            return try await act(request, back: "/sagas/\(HTML.urlComponent(id))") { session, form in
                let reason = try Self.reason(form)
                _ = try await backend.compensate(id, session.name, reason)
                logger.notice("console: compensation requested", metadata: ["saga.id": "\(id)", "operator": "\(session.name)"])
                return "/sagas/\(HTML.urlComponent(id))?done=compensate"
            }
        }
        router.post("/sagas/:id/resolve") { request, context in
            let id = try context.parameters.require("id")
            return try await act(request, back: "/sagas/\(HTML.urlComponent(id))") { session, form in
                guard let resolve = backend.resolve else {
                    throw ConsoleRefusal(status: .notFound, message: "this console does not resolve sagas; use saga resolve")
                }
                let reason = try Self.reason(form)
                _ = try await resolve(id, session.name, reason)
                logger.notice("console: resolved by hand", metadata: ["saga.id": "\(id)", "operator": "\(session.name)"])
                return "/sagas/\(HTML.urlComponent(id))?done=resolve"
            }
        }
        router.post("/sagas/:id/signal") { request, context in
            let id = try context.parameters.require("id")
            return try await act(request, back: "/sagas/\(HTML.urlComponent(id))") { session, form in
                guard let signal = backend.signal else {
                    throw ConsoleRefusal(status: .notFound, message: "this console does not deliver signals; use saga signal")
                }
                let name = (form["name"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                guard !name.isEmpty else {
                    throw ConsoleRefusal(status: .badRequest, message: "say which signal: the name the saga's wait step declares")
                }
                let data = try Self.signalData(form["data"])
                switch try await signal(id, name, data, session.name) {
                case .delivered(let state):
                    logger.notice(
                        "console: signal delivered", metadata: ["saga.id": "\(id)", "signal": "\(name)", "operator": "\(session.name)"])
                    // A signal for a wait the saga has not reached yet is kept for it (as `saga
                    // signal` says too).
                    let kept =
                        state.history.last { $0.outcome == .completed && $0.actor == session.name }?.reason?.hasSuffix(
                            "before the saga reached the wait") == true
                    return "/sagas/\(HTML.urlComponent(id))?done=\(kept ? "signal-kept" : "signal")"
                case .ignored(let reason, _):
                    throw ConsoleRefusal(status: .conflict, message: "signal '\(name)' ignored: \(reason)")
                }
            }
        }
        router.post("/dlq/drop") { request, _ in
            try await act(request, back: "/dlq") { session, form in
                guard let drop = backend.drop else {
                    throw ConsoleRefusal(status: .notFound, message: "this console does not drop dead letters; use saga dlq drop")
                }
                guard let id = form["id"], !id.isEmpty else {
                    throw ConsoleRefusal(status: .badRequest, message: "say which dead letter to drop")
                }
                guard try await drop(id, 1000) else {
                    throw ConsoleRefusal(
                        status: .notFound, message: "no dead letter '\(id)' among the first 1000 (dropped or requeued already?)")
                }
                logger.notice("console: dead letter dropped", metadata: ["operator": "\(session.name)", "dead_letter": "\(id)"])
                return "/dlq?done=dropped"
            }
        }
        router.post("/dlq/requeue") { request, _ in
            try await act(request, back: "/dlq") { session, form in
                let ids: Set<String>? = form["all"] == "1" ? nil : form["id"].map { [$0] }
                guard ids == nil || ids?.isEmpty == false else {
                    throw ConsoleRefusal(status: .badRequest, message: "say which dead letter to requeue, or all")
                }
                let result = try await backend.requeue(ids, 1000)
                logger.notice(
                    "console: dead letters requeued",
                    metadata: ["operator": "\(session.name)", "requeued": "\(result.requeued.count)", "failed": "\(result.failed.count)"])
                if !result.failed.isEmpty {
                    throw ConsoleRefusal(
                        status: .internalServerError, message: "could not requeue: " + result.failed.joined(separator: "; "))
                }
                return "/dlq?done=requeued-\(result.requeued.count)"
            }
        }
        router.get("/events") { request, _ in
            events(sagaID: Self.query(request)["saga"]?.last)
        }
        router.get("/metrics") { _, _ in
            do {
                // Within Prometheus' default scrape timeout (10 s): a store that does not answer
                // makes a quick 503 (the scrape's `up` is 0), not a scrape that times out.
                let (store, configuration, backend, counts) = (backend.store, pages.configuration, backend, counts)
                let text = try await withTimeLimit(Self.metricsPatience, timedOut: { StoreMetricsTimedOut() }) {
                    try await StoreMetrics.render(
                        store: store, stalledThreshold: configuration.stalledThreshold.consoleSeconds,
                        stuckAttempts: configuration.stuckAttempts, topology: configuration.prefix,
                        definitions: (try? await backend.definitions().all) ?? [], countCache: counts)
                }
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
            } catch {
                logger.warning("console /metrics failed", metadata: ["error": "\(error)"])
                return Response(
                    status: .serviceUnavailable, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: "# the saga store did not answer: \(error)\n")))
            }
        }
        router.get("/health/live") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: "live\n")))
        }
        router.get("/health/ready") { _, _ in
            let report = await health.probe(backend.store)
            return Response(
                status: report.isReady ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: report.json() + "\n")))
        }
        router.get("/assets/console.css") { _, _ in
            asset(ConsoleAssets.css, type: "text/css; charset=utf-8")
        }
        router.get("/assets/console.js") { _, _ in
            asset(ConsoleAssets.javascript, type: "text/javascript; charset=utf-8")
        }
    }

    // MARK: - Pages

    /// Renders a page; an error becomes a page that says what went wrong and what to do.
    func page(_ request: Request, _ render: (ConsoleSecurity.Session?) async throws -> String) async -> Response {
        let session = security.session(of: request)
        do {
            return html(try await render(session))
        } catch let refusal as ConsoleRefusal {
            return html(pages.errorPage(refusal.message, session: session), status: refusal.status)
        } catch let error as SagaError where error.code == .unknownSaga {
            return html(pages.errorPage("\(error)", session: session, back: "/sagas"), status: .notFound)
        } catch let error as BusError where error.code == .unreachable {
            // The broker is away (dead letters): the console is fine, the page can be tried again.
            return html(pages.errorPage("\(error)", session: session), status: .serviceUnavailable)
        } catch {
            logger.warning("console page failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return html(pages.errorPage("\(error)", session: session), status: .internalServerError)
        }
    }

    func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    func asset(_ text: String, type: String) -> Response {
        Response(
            status: .ok, headers: [.contentType: type, .cacheControl: "max-age=60"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    static func redirect(_ location: String) -> Response {
        Response(status: .seeOther, headers: [.location: location])
    }

    func sessionCookie(_ value: String, maxAge: Int? = nil, for request: Request) -> Cookie {
        Cookie(
            name: ConsoleSecurity.cookieName, value: value, maxAge: maxAge, path: "/", secure: security.cookieIsSecure(for: request),
            httpOnly: true, sameSite: .strict)
    }

    // MARK: - Actions

    /// Checks an action (see ``ConsoleSecurity/authorize(_:form:)``), runs it and redirects to
    /// the page it returns; a refusal or failure is shown on a page.
    func act(
        _ request: Request, back: String, _ body: (ConsoleSecurity.Session, [String: String]) async throws -> String
    ) async throws -> Response {
        let form = try await Self.form(request)
        let session: ConsoleSecurity.Session
        switch security.authorize(request, form: form) {
        case .success(let found): session = found
        case .failure(let refusal):
            logger.warning("console refused an action", metadata: ["path": "\(request.uri.path)", "why": "\(refusal.message)"])
            return html(pages.errorPage(refusal.message, session: security.session(of: request), back: back), status: refusal.status)
        }
        do {
            return Self.redirect(try await body(session, form))
        } catch let refusal as ConsoleRefusal {
            return html(pages.errorPage(refusal.message, session: session, back: back), status: refusal.status)
        } catch {
            return html(pages.errorPage("\(error)", session: session, back: back), status: .conflict)
        }
    }

    func login(_ request: Request) async throws -> Response {
        let form = try await Self.form(request)
        let next = Self.safeNext(form["next"])
        guard security.actionsEnabled else { return Self.redirect("/login") }
        guard security.sameOrigin(request) else {
            return html(
                pages.login(session: nil, next: next, error: "refused: the form did not come from this console"), status: .forbidden)
        }
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard !name.isEmpty, name.count <= 64 else {
            return html(
                pages.login(session: nil, next: next, error: "give your name: it is recorded with every action you take"),
                status: .badRequest)
        }
        guard security.tokenMatches(form["token"] ?? "") else {
            logger.warning("console: a login with a wrong operator token", metadata: ["name": "\(name)"])
            try await Task.sleep(for: .milliseconds(500))
            return html(
                pages.login(
                    session: nil, next: next,
                    error: "wrong operator token (it is the content of the console's --token-file or SAGAKIT_CONSOLE_TOKEN)"),
                status: .unauthorized)
        }
        logger.notice("console: operator logged in", metadata: ["operator": "\(name)"])
        var response = Self.redirect(next)
        response.setCookie(sessionCookie(security.startSession(name: name), for: request))
        return response
    }

    static func reason(_ form: [String: String]) throws -> String {
        let reason = (form["reason"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard !reason.isEmpty else {
            throw ConsoleRefusal(status: .badRequest, message: "say why: the reason is recorded in the saga's history")
        }
        return String(reason.prefix(500))
    }

    /// The signal form's data: empty, or a JSON object.
    static func signalData(_ text: String?) throws -> JSONObject {
        let text = (text ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { return [:] }
        do {
            return try JSONCoding.object(fromJSON: Data(text.utf8))
        } catch let error as SagaError {
            throw ConsoleRefusal(
                status: .badRequest, message: "the data is not a JSON object (\(error.message)); for example {\"approved\": true}")
        }
    }

    static func flash(_ code: String?) -> String? {
        guard let code else { return nil }
        switch code {
        case "retry":
            return "Retry requested: the saga's current command was sent again; recorded in its history with your name and reason."
        case "compensate": return "Compensation requested: recorded in the saga's history with your name and reason."
        case "resolve":
            return
                "Resolved by hand: the saga goes on as if that work had succeeded; recorded in its history with your name and what you did."
        case "signal": return "Signal delivered: the saga goes on with its next step; recorded in its history with your name."
        case "dropped": return "Dead letter dropped for good (the console's log records who dropped it)."
        case "signal-kept":
            return
                "Signal kept: the saga has not reached the wait for it yet; when it does, it goes on at once. Recorded in its history with your name."
        default:
            if code.hasPrefix("requeued-"), let count = Int(code.dropFirst("requeued-".count)) {
                return "\(count) dead letter(s) requeued to where they came from."
            }
            return nil
        }
    }

    /// A local path to go to after logging in (never another site).
    static func safeNext(_ next: String?) -> String {
        guard let next, next.hasPrefix("/"), !next.hasPrefix("//"), !next.contains("\\") else { return "/" }
        return next
    }

    // MARK: - Events

    /// A `text/event-stream` of saga lifecycle events (of one saga with `sagaID`), with a
    /// heartbeat; ends when the client goes away or the console shuts down.
    func events(sagaID: String?) -> Response {
        let stream = broadcaster.subscribe()
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: "retry: 3000\n\n"))
                for await item in stream {
                    let text: String
                    switch item {
                    case .heartbeat:
                        text = ": heartbeat\n\n"
                    case .connected(let up):
                        text = "event: status\ndata: {\"connected\":\(up)}\n\n"
                    case .event(let event):
                        if let sagaID, event.sagaID != sagaID { continue }
                        let data = (try? JSONCoding.encode(event)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
                        text = "id: \(event.id)\nevent: saga\ndata: \(data)\n\n"
                    }
                    try await writer.write(ByteBuffer(string: text))
                }
                try await writer.finish(nil)
            })
    }

    // MARK: - Request parsing

    static func query(_ request: Request) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for (key, value) in (request.uri.query ?? "").split(separator: "&").map({ pair -> (String, String) in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ part: Substring) -> String {
                String(part).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(part)
            }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }) {
            result[key, default: []].append(value)
        }
        return result
    }

    static func form(_ request: Request) async throws -> [String: String] {
        var request = request
        let buffer = try await request.collectBody(upTo: 64 * 1024)
        return parseForm(String(buffer: buffer))
    }
}
