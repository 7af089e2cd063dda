import Foundation
import Participant
import SagaConsole
import SagaSQLite
import SagaTestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Who sees sagas' data: keys that look secret are masked by default in every `saga` output and
/// the console; a console beyond loopback refuses to start until told who may read it; with read
/// access `operators` the pages need a login, and the session cookie is `Secure` over HTTPS.
@Suite("Console access and default redaction", .timeLimit(.minutes(3)))
struct ConsoleAccessTests {
    @Test func keysThatLookSecretAreMaskedByDefaultAndListedKeysToo() throws {
        let payload: JSONObject = [
            "password": "hunter2", "api_token": "t-1", "card-number": "4111", "pin": "1234", "amount": 5, "businessName": "Acme",
            "nested": ["clientSecret": "s-1", "items": [["accessToken": "a-1", "sku": "X"]]], "email": "a@b.c",
        ]
        let redacted = Redactor(list: ["email"]).redact(payload)
        for key in ["password", "api_token", "card-number", "pin", "email"] {
            #expect(redacted[key] == .string(Redactor.mask), "\(key): \(redacted)")
        }
        #expect(redacted["amount"] == 5 && redacted["businessName"] == "Acme", "\(redacted)")
        let nested = redacted["nested"]?.objectValue
        #expect(nested?["clientSecret"] == .string(Redactor.mask), "\(redacted)")
        #expect(nested?["items"] == [["accessToken": .string(Redactor.mask), "sku": "X"]], "\(redacted)")

        // Turned off, only the listed keys are masked.
        let listedOnly = Redactor(list: ["email"], masksSecretLookingKeys: false).redact(payload)
        #expect(listedOnly["password"] == "hunter2" && listedOnly["email"] == .string(Redactor.mask), "\(listedOnly)")
        #expect(Redactor(keys: [], masksSecretLookingKeys: false).redact(payload) == payload)

        // A body that is not JSON cannot be searched: shown unless the operator listed keys.
        #expect(Redactor(keys: []).redact(body: Array("plain text".utf8)) == "plain text")
        #expect(Redactor(keys: ["email"]).redact(body: Array("plain text".utf8)).hasPrefix("(not shown"))
        #expect(Redactor(keys: []).redact(body: Array(#"{"password":"p","n":1}"#.utf8)) == #"{"n":1,"password":"••••"}"#)
    }

    @Test(.enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"))
    func sagaListMasksSecretLookingKeysUnlessTurnedOff() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let directory = try OperatorCLITests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        let prefix = "access-\(UUID().uuidString.prefix(8).lowercased())"
        try await SQLiteSagaStore(path: path).withRunning { store in
            let saga = SagaStateMachine(definition: OperatorCLITests.trip).start(
                id: "trip-secret", payload: ["password": "hunter2", "refreshToken": "r-1", "amount": 5],
                context: [SagaTopology.contextKey: prefix], now: Date()
            ).0
            _ = try await store.create(saga, outbox: [])
        }
        let cli = SagaCLI(store: "sqlite://\(path)", amqp: amqp, prefix: prefix)
        let listed = try #require((try await cli.json(["list"]) as? [[String: Any]])?.first, "saga list --json")
        let payload = listed["payload"] as? [String: Any]
        #expect(payload?["password"] as? String == Redactor.mask && payload?["refreshToken"] as? String == Redactor.mask, "\(listed)")
        #expect(payload?["amount"] as? Int == 5, "\(listed)")
        let text = try await cli.run(["list", "--json"], environment: ["SAGAKIT_REDACT_DEFAULTS": "false"])
        #expect(text.status == 0 && text.stdout.contains("hunter2"), "\(text)")
        let wrong = try await cli.run(["list"], environment: ["SAGAKIT_REDACT_DEFAULTS": "no"])
        #expect(wrong.status != 0 && wrong.stderr.contains("SAGAKIT_REDACT_DEFAULTS"), "\(wrong)")
    }

    @Test func aConsoleBeyondLoopbackRefusesToStartUntilToldWhoMayRead() async throws {
        let directory = try OperatorCLITests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = "sqlite://" + directory.appendingPathComponent("sagas.db").path
        let environment: [String: String?] = [
            "SAGAKIT_CONSOLE_TOKEN": nil, "SAGA_CONSOLE_TOKEN": nil, "SAGAKIT_CONSOLE_READ_ACCESS": nil,
            "SAGAKIT_CONSOLE_SECURE_COOKIES": nil,
        ]
        func console(_ arguments: [String], _ extra: [String: String?] = [:]) async -> CommandRun {
            await CommandRun.product(
                "saga", ["console", "--port", "0", "--store-url", store] + arguments, environment: environment.merging(extra) { $1 },
                timeout: .seconds(30))
        }
        let open = await console(["--host", "0.0.0.0"])
        #expect(open.status != 0, "\(open)")
        #expect(open.stderr.contains("read every saga's data") && open.stderr.contains("--read-access operators"), "\(open)")
        let noToken = await console(["--host", "0.0.0.0", "--read-access", "operators"])
        #expect(noToken.status != 0 && noToken.stderr.contains("needs an operator token"), "\(noToken)")
        let typo = await console([], ["SAGAKIT_CONSOLE_READ_ACCESS": "everyone"])
        #expect(typo.status != 0 && typo.stderr.contains("SAGAKIT_CONSOLE_READ_ACCESS 'everyone' is not a read access"), "\(typo)")
        let cookieTypo = await console([], ["SAGAKIT_CONSOLE_SECURE_COOKIES": "ture"])
        #expect(
            cookieTypo.status != 0 && cookieTypo.stderr.contains("SAGAKIT_CONSOLE_SECURE_COOKIES 'ture' is not true or false"),
            "\(cookieTypo)")
        // The library refuses the same configurations.
        #expect(throws: SagaConsoleConfigurationError.self) { try SagaConsoleConfiguration(host: "10.0.0.5").validate() }
        #expect(throws: SagaConsoleConfigurationError.self) { try SagaConsoleConfiguration(readAccess: .operators).validate() }
        try SagaConsoleConfiguration(host: "0.0.0.0", operatorToken: "t", readAccess: .operators).validate()
        try SagaConsoleConfiguration(host: "0.0.0.0", readAccess: .anyone).validate()
    }

    @Test(.enabled(if: TestBroker.shouldRunIntegrationTests, "start RabbitMQ (scripts/rabbitmq.sh start) or set AMQP_URL"))
    func readAccessOperatorsSendsReadersToLogInAndSecuresTheCookieOverHTTPS() async throws {
        guard let amqp = try TestBroker.availableURL() else { return }
        let directory = try OperatorCLITests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("sagas.db").path
        try await SQLiteSagaStore(path: path).withRunning { _ in }
        let tokenFile = directory.appendingPathComponent("token").path
        let token = UUID().uuidString
        try token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let console = try ProductProcess(
            "saga",
            [
                "console", "--port", "0", "--store-url", "sqlite://\(path)", "--amqp-url", amqp, "--prefix",
                "access-\(UUID().uuidString.prefix(8).lowercased())", "--read-access", "operators", "--token-file", tokenFile,
            ],
            environment: ["SAGAKIT_CONSOLE_TOKEN": nil, "SAGA_CONSOLE_TOKEN": nil, "SAGAKIT_CONSOLE_READ_ACCESS": nil])
        defer { console.process.terminate() }
        #expect(try await console.waitForOutput(containing: "listening on http://", timeout: .seconds(60)), "\(console.output)")
        #expect(console.output.contains("pages for logged-in operators only"), "\(console.output)")
        let base = try #require(
            console.output.split(separator: " ").first { $0.hasPrefix("http://127.0.0.1:") }.map { String($0.dropLast()) },
            "\(console.output)")
        let http = PlainHTTP()

        // Not logged in: pages send the reader to the login page and back, live updates are refused.
        let overview = try await http.send("GET", base + "/sagas?status=failed")
        #expect(overview.status == 303 && overview.header("Location") == "/login?next=%2Fsagas%3Fstatus%3Dfailed", "\(overview)")
        #expect(try await http.send("GET", base + "/events").status == 401)
        #expect(try await http.send("GET", base + "/dlq").status == 303)
        let login = try await http.send("GET", base + "/login")
        #expect(login.status == 200 && login.body.contains("operator token") && !login.body.contains("sqlite://"), "\(login.body)")
        // Open whatever the access: assets, probes, metrics.
        for open in ["/assets/console.css", "/health/live", "/metrics"] {
            #expect(try await http.send("GET", base + open).status == 200, "\(open)")
        }

        // Logging in over plain HTTP: the cookie is HttpOnly, not Secure (a browser would not send it back).
        let origin = ["Origin": base]
        let plain = try await http.send("POST", base + "/login", headers: origin, form: ["name": "ada", "token": token, "next": "/"])
        #expect(plain.status == 303, "\(plain)")
        let plainCookie = try #require(plain.header("Set-Cookie"), "\(plain)")
        #expect(plainCookie.contains("HttpOnly") && !plainCookie.contains("Secure"), "\(plainCookie)")
        let session = try #require(plainCookie.split(separator: ";").first.map(String.init))
        let page = try await http.send("GET", base + "/", headers: ["Cookie": session])
        #expect(page.status == 200 && page.body.contains("operator-name"), "\(page.status)")

        // Through a proxy that terminates HTTPS: Secure.
        let proxied = try await http.send(
            "POST", base + "/login", headers: origin.merging(["X-Forwarded-Proto": "https"]) { $1 },
            form: ["name": "ada", "token": token, "next": "/"])
        #expect(proxied.header("Set-Cookie")?.contains("Secure") == true, "\(proxied)")
        // A wrong token gets no session.
        let wrong = try await http.send("POST", base + "/login", headers: origin, form: ["name": "eve", "token": "nope", "next": "/"])
        #expect(wrong.status == 401 && wrong.header("Set-Cookie") == nil, "\(wrong)")
    }
}

/// HTTP without following redirects or keeping cookies: the test sees each response as it is.
final class PlainHTTP: NSObject, URLSessionTaskDelegate, Sendable {
    struct Reply: CustomStringConvertible {
        var status: Int
        var headers: [String: String]
        var body: String
        func header(_ name: String) -> String? { headers.first { $0.key.lowercased() == name.lowercased() }?.value }
        var description: String { "\(status) \(headers) \(body.prefix(300))" }
    }

    func send(_ method: String, _ url: String, headers: [String: String] = [:], form: [String: String]? = nil) async throws -> Reply {
        var request = URLRequest(url: try #require(URL(string: url)))
        request.httpMethod = method
        request.httpShouldHandleCookies = false
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        if let form {
            request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
            request.httpBody = Data(
                form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(
                    separator: "&"
                ).utf8)
        }
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpCookieAcceptPolicy = .never
        let session = URLSession(configuration: configuration, delegate: self, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        let (data, response) = try await session.data(for: request)
        let http = try #require(response as? HTTPURLResponse)
        var fields: [String: String] = [:]
        for (name, value) in http.allHeaderFields { fields["\(name)"] = "\(value)" }
        return Reply(status: http.statusCode, headers: fields, body: String(decoding: data, as: UTF8.self))
    }

    func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse, newRequest request: URLRequest,
        completionHandler: @escaping @Sendable (URLRequest?) -> Void
    ) {
        completionHandler(nil)
    }
}
