import SagaCore
import Testing

@Suite("ConnectionURL")
struct ConnectionURLTests {
    @Test("AMQP: credentials, several hosts, %2F vhost, query")
    func amqp() throws {
        let url = try ConnectionURL(parsing: "amqp://us%40er:p%3Ass@h1:5672,h2:5673/%2F?heartbeat=30&name=a%20b")
        #expect(url.scheme == "amqp")
        #expect(url.user == "us@er" && url.password == "p:ss")
        #expect(url.hosts == [.init(name: "h1", port: 5672), .init(name: "h2", port: 5673)])
        #expect(url.path == "//" && url.path.dropFirst() == "/")
        #expect(url.queryItems == ["heartbeat": "30", "name": "a b"])
        #expect(url.redacted == "amqp://us%40er:***@h1:5672,h2:5673/%2F?heartbeat=30&name=a%20b")
        #expect("\(url)" == url.redacted)

        let bare = try ConnectionURL(parsing: "AMQPS://broker")
        #expect(bare.scheme == "amqps" && bare.user == nil && bare.password == nil && bare.path.isEmpty)
        #expect(bare.hosts == [.init(name: "broker")])

        let ipv6 = try ConnectionURL(parsing: "amqp://u:p@[::1]:5000,[fe80::1]/v")
        #expect(ipv6.hosts == [.init(name: "::1", port: 5000), .init(name: "fe80::1")])
        #expect(ipv6.hosts[0].description == "[::1]:5000")
    }

    @Test("PostgreSQL and SQLite forms")
    func storeForms() throws {
        let postgres = try ConnectionURL(parsing: "postgres://u:p@h:5432/db?sslmode=require")
        #expect(postgres.scheme == "postgres" && postgres.path == "/db" && postgres.queryItems["sslmode"] == "require")
        #expect(postgres.hosts == [.init(name: "h", port: 5432)])

        let absolute = try ConnectionURL(parsing: "sqlite:///abs/path%20x.db")
        #expect(absolute.hosts.isEmpty && absolute.path == "/abs/path x.db")
        let relative = try ConnectionURL(parsing: "sqlite:relative.db")
        #expect(relative.hosts.isEmpty && relative.path == "relative.db" && relative.user == nil)
        let spaced = try ConnectionURL(parsing: " sqlite:/a.db\n")
        #expect(spaced.path == "/a.db")
    }

    @Test("invalid URLs fail with invalidConfiguration")
    func invalid() {
        for text in [
            "", "no scheme", "://h", "amqp://h:0", "amqp://h:99999", "amqp://h:x", "amqp://h1,,h2",
            "amqp://u:p@h/%zz", "amqp://u:%zz@h", "amqp://u:p@h#frag", "amqp:u:p@h", "amqp://[::1",
            "amqp://h?=v",
        ] {
            #expect(throws: SagaError.self, "\(text)") { try ConnectionURL(parsing: text) }
            do {
                _ = try ConnectionURL(parsing: text)
            } catch {
                #expect(error.code == .invalidConfiguration)
            }
        }
    }

    @Test("redaction of well-formed URLs keeps everything but the password")
    func redactWellFormed() {
        #expect(ConnectionURL.redact("amqp://u:secret@h/") == "amqp://u:***@h/")
        #expect(ConnectionURL.redact("amqp://u@h:5672/v") == "amqp://u@h:5672/v")
        #expect(ConnectionURL.redact("amqp://h:5672,h2:5673/v?x=1") == "amqp://h:5672,h2:5673/v?x=1")
        #expect(ConnectionURL.redact("amqp://[::1]:5672/v") == "amqp://[::1]:5672/v")
        #expect(ConnectionURL.redact("sqlite:relative.db") == "sqlite:relative.db")
        #expect(ConnectionURL.redact("sqlite:///a/b.db") == "sqlite:///a/b.db")
        #expect(ConnectionURL.redact("postgres://h/db?password=x&a=b") == "postgres://h/db?password=***")
    }

    @Test("redaction of malformed URLs hides the password")
    func redactMalformed() {
        #expect(ConnectionURL.redact("amqp:/u:PW@host") == "amqp:***@host")
        #expect(ConnectionURL.redact("postgres:u:PW@host") == "postgres:***@host")
        #expect(ConnectionURL.redact("amqp://u:p/w?x#y@z:q@host/v") == "amqp://u:***@host/v")
        #expect(ConnectionURL.redact("amqp://u:secret") == "amqp://u:***")
        #expect(ConnectionURL.redact("u:PW@host") == "u:***@host")
    }

    /// Every generated URL holds a password made of marker segments joined by reserved characters; no segment
    /// may appear in the redacted text, in a parse error, or in any description of a parsed URL.
    @Test("no generated URL leaks its password", arguments: ConnectionURLTests.passwords)
    func noLeaks(password: Password) {
        var checked = 0
        for template in Self.templates {
            for scheme in ["amqp", "amqps", "postgres", "postgresql", "sqlite", "x-y+z", "AMQP"] {
                if template.needsHostAfterPassword == false, password.text.contains("@") { continue }
                let raw = template.make(scheme, password.text)
                let redacted = ConnectionURL.redact(raw)
                expectHidden(password, in: redacted, raw)
                do {
                    let url = try ConnectionURL(parsing: raw)
                    expectHidden(password, in: url.redacted, raw)
                    expectHidden(password, in: String(describing: url), raw)
                    expectHidden(password, in: String(reflecting: url), raw)
                    var dumped = ""
                    dump(url, to: &dumped)
                    expectHidden(password, in: dumped, raw)
                } catch {
                    expectHidden(password, in: String(describing: error), raw)
                    expectHidden(password, in: error.message + (error.recoverySuggestion ?? ""), raw)
                }
                checked += 1
            }
        }
        #expect(checked > 100)
    }

    private func expectHidden(_ password: Password, in text: String, _ raw: String) {
        for segment in Password.segments {
            #expect(!text.contains(segment), "'\(segment)' leaked from \(raw.debugDescription): \(text.debugDescription)")
        }
    }

    struct Password: Sendable, CustomTestStringConvertible {
        static let segments = ["Kx7q", "Mv2z", "Rt9w"]
        var text: String
        var testDescription: String { text.debugDescription }
    }

    struct Template: Sendable {
        var make: @Sendable (_ scheme: String, _ password: String) -> String
        /// `false` for forms with nothing after the password: there, a password with an '@' cannot be told
        /// from `user:password@host` by anyone.
        var needsHostAfterPassword = true
    }

    static let passwords: [Password] = {
        let separators = ["", "/", "?", "#", "@", ":", "%", "&", "=", " ", ",", "[", "]", "%2F", "@@", "/?#@:"]
        var result: [Password] = []
        for first in separators {
            for second in ["", "/", "@", ":", "?"] {
                result.append(Password(text: "Kx7q" + first + "Mv2z" + second + "Rt9w"))
            }
        }
        return result
    }()

    static let templates: [Template] = [
        Template { s, p in "\(s)://u:\(p)@h:5672/v" },
        Template { s, p in "\(s)://u:\(p)@h" },
        Template { s, p in "\(s):/u:\(p)@h" },
        Template { s, p in "\(s):u:\(p)@h" },
        Template { s, p in "\(s)//u:\(p)@h" },
        Template { s, p in "\(s):///u:\(p)@h/v" },
        Template { _, p in "u:\(p)@h" },
        Template { _, p in "//u:\(p)@h" },
        Template { s, p in "\(s)://u:\(p)@" },
        Template { s, p in "\(s)://:\(p)@h" },
        Template { s, p in "\(s)://us:er:\(p)@h" },
        Template { s, p in "\(s)://u:\(p)@h1,h2:bad/v" },
        Template { s, p in "\(s)://u:\(p)@h1:5672,/v" },
        Template { s, p in "\(s)://u:\(p)@h/v?heartbeat=x&password=\(p)" },
        Template { s, p in "\(s)://u:\(p)@h/v?x=a@b" },
        Template { s, p in "\(s)://u:\(p)@[::1/v" },
        Template { s, p in "\(s)://u:\(p)@h:99999" },
        Template { s, p in "\(s)://u:\(p)%zz@h" },
        Template { s, p in "  \(s)://u:\(p)@h  " },
        Template { s, p in "\(s)://u:\(p)@h/v#frag" },
        Template { s, p in "\(s)://u:\(p)@h/%zz" },
        Template { s, p in "\(s)://u:\(p)@h?=x" },
        Template { s, p in "\(s)://u:\(p)@h@h2/v" },
        Template { s, p in "\(s)://u:\(p)/@h" },
        Template { s, p in "\(s)://u:\(p)@h:5672/v?x=1" },
        Template(make: { s, p in "\(s)://u:\(p)" }, needsHostAfterPassword: false),
        Template(make: { s, p in "\(s)://u:\(p)/v" }, needsHostAfterPassword: false),
        Template(make: { s, p in "\(s):u:\(p)" }, needsHostAfterPassword: false),
        Template(make: { s, p in "\(s)://h/db?password=\(p)" }, needsHostAfterPassword: false),
        Template(make: { s, p in "\(s)://h/db?sslpassword=\(p)&x=1" }, needsHostAfterPassword: false),
    ]
}
