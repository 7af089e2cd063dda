import Synchronization

/// A statement on the service's own tables that runs inside the transaction recording a saga's
/// transition, when those tables live in the same database as the saga store.
///
/// A handler passes its local writes with its outcome (`SagaContext.completeStep(merging:writing:)`,
/// `completeCompensation(writing:)`, `failAndCompensate(reason:writing:)`). The store runs them
/// in the one transaction that makes the saga's compare-and-swap and records the next command
/// in the outbox, after the compare-and-swap: the step's effect, the state change and the next
/// command commit together or not at all. One commit, one `fsync`, and exactly once without an
/// idempotency key: a duplicate delivery loses the compare-and-swap, and its writes roll back
/// with it.
///
/// A write is data, not a closure, so that every SQL store runs it the same way: the statement
/// text with numbered placeholders `$1 … $n` and one ``LocalValue`` per placeholder. SQLite runs
/// `$n` as `?n`; PostgreSQL binds them. Write one statement (no `;`-separated list), no
/// transaction control (`BEGIN`, `COMMIT`, `SAVEPOINT` …), and never SagaKit's own tables.
///
/// ```swift
/// LocalWrite(
///     "UPDATE stock SET reserved = reserved + $1 WHERE sku = $2 AND available - reserved >= $1",
///     LocalValue(order.quantity), .text(order.sku), expecting: .atLeastOneRow)
/// ```
///
/// The SQL stores run local writes (`SQLiteSagaStore`, `PostgresSagaStore`); a store that does
/// not (``SagaStore/supportsLocalWrites`` is `false`, as for ``InMemorySagaStore``) refuses them
/// with `unsupported`.
public struct LocalWrite: Sendable, Hashable, CustomStringConvertible {
    /// How many rows a write must affect, or the whole transaction rolls back.
    public enum Expectation: Sendable, Hashable {
        /// Any number, none included.
        case any
        /// At least one row (an `UPDATE … WHERE` that found its row, an `INSERT` that was not
        /// skipped by `ON CONFLICT DO NOTHING`).
        case atLeastOneRow
        /// Exactly this many rows.
        case rows(Int)
    }

    /// One statement, with placeholders `$1 … $n`.
    public var sql: String
    /// The values of the placeholders, `$1` first.
    public var parameters: [LocalValue]
    /// How many rows the statement must affect.
    public var expectation: Expectation

    /// Creates a write from its statement and parameters.
    public init(_ sql: String, parameters: [LocalValue] = [], expecting expectation: Expectation = .any) {
        self.sql = sql
        self.parameters = parameters
        self.expectation = expectation
    }

    /// Creates a write from its statement and parameters.
    public init(_ sql: String, _ parameters: LocalValue..., expecting expectation: Expectation = .any) {
        self.init(sql, parameters: parameters, expecting: expectation)
    }

    /// The statement text (parameter values are never printed: they may be personal data).
    public var description: String { "LocalWrite(\(sql.debugDescription), \(parameters.count) parameters)" }
}

/// A parameter of a ``LocalWrite``.
public enum LocalValue: Sendable, Hashable, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByNilLiteral
{
    /// A 64-bit integer (`INTEGER` in SQLite, `int8` in PostgreSQL).
    case int(Int64)
    /// A double (`REAL`, `float8`).
    case double(Double)
    /// A string (`TEXT`, `text`; cast in the SQL for other PostgreSQL types: `$1::jsonb`).
    case text(String)
    /// A boolean (the integer 0 or 1 in SQLite, `bool` in PostgreSQL).
    case bool(Bool)
    /// SQL `NULL`.
    case null
    /// Bytes (`BLOB`, `bytea`).
    case bytes([UInt8])

    /// An integer.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// An integer of any width (`LocalValue(order.quantity)` for an `Int`), as a 64-bit integer.
    /// - Precondition: `value` fits in 64 signed bits.
    public init(_ value: some BinaryInteger) { self = .int(Int64(value)) }
    /// A double.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A string.
    public init(stringLiteral value: String) { self = .text(value) }
    /// A boolean.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// `NULL`.
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - For the stores

extension LocalWrite {
    /// The error for the write at `index` (0-based) of `count`: nothing of the transition was
    /// stored. The message names the statement, never its parameter values.
    package static func failure(index: Int?, of count: Int, sql: String?, _ reason: String, underlying: (any Error)? = nil)
        -> SagaError
    {
        let which =
            if let index, let sql { "local write \(index + 1) of \(count) (\(sql.debugDescription))" } else {
                "the local writes (at commit)"
            }
        return SagaError(
            .localWriteFailed,
            "\(which) \(reason); nothing of the transition was stored",
            recoverySuggestion:
                "fix the statement or its data, or catch the error in the handler and report another outcome (failAndCompensate); rethrown, the step is retried by its retry policy",
            underlying: underlying)
    }

    /// The error for a write the database refused as a statement — a missing table or column, a
    /// privilege, SQL it cannot compile — rather than for its data: a deployment's mistake, which
    /// an operator fixes, not the step's failure. It is `storeUnavailable`, like the store's own
    /// missing tables: the command is redelivered until the statement works, no retry of the step
    /// is spent and no saga is compensated for it. `schemaHint` says where unqualified names are
    /// looked up when that differs from the store's tables.
    package static func statementRefused(
        index: Int, of count: Int, sql: String, _ reason: String, schemaHint: String?, underlying: any Error
    )
        -> SagaError
    {
        SagaError(
            .storeUnavailable,
            "local write \(index + 1) of \(count) (\(sql.debugDescription)) \(reason); the database refused the statement itself (a missing table or column, a privilege, SQL it cannot compile), so nothing of the transition was stored and the command is redelivered until it works",
            recoverySuggestion:
                "create the table or column, grant the privilege, or fix the statement and deploy it; the saga waits at this step and goes on by itself\(schemaHint.map { " (\($0))" } ?? "")",
            underlying: underlying)
    }

    /// Checks the number of rows the statement affected (`nil`: the database did not say).
    /// - Throws: `localWriteFailed` when it does not meet the ``expectation``.
    package func check(affectedRows: Int?, index: Int, of count: Int) throws {
        let expected: String
        switch expectation {
        case .any: return
        case .atLeastOneRow:
            if let affectedRows, affectedRows >= 1 { return }
            expected = "at least 1"
        case .rows(let rows):
            if affectedRows == rows { return }
            expected = "exactly \(rows)"
        }
        let affected = affectedRows.map { "affected \($0) rows" } ?? "reported no row count"
        throw Self.failure(index: index, of: count, sql: sql, "\(affected), expected \(expected)")
    }

    /// Checks what every store checks before running the statement: no transaction control, and
    /// one parameter per placeholder (`$1 … $n`, the highest `n` equal to the parameter count).
    /// - Throws: `localWriteFailed` naming the problem.
    package func validate(index: Int, of count: Int) throws {
        let scan = LocalSQLScan.cached(sql)
        if let keyword = scan.firstKeyword?.uppercased(),
            ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "START", "ABORT", "PREPARE", "VACUUM"]
                .contains(keyword)
        {
            throw Self.failure(
                index: index, of: count, sql: sql, "is transaction control (\(keyword)), which would break the saga's transaction")
        }
        if scan.highestPlaceholder != parameters.count {
            throw Self.failure(
                index: index, of: count, sql: sql,
                "has placeholders up to $\(scan.highestPlaceholder) but \(parameters.count) parameters")
        }
    }

    /// The statement with `$n` placeholders written `?n` (SQLite's numbered parameters);
    /// string literals, quoted identifiers and comments are left alone.
    package var sqliteSQL: String { LocalSQLScan.cached(sql).rewritten }

    /// The statement with each placeholder `$n` (outside literals, quoted identifiers and
    /// comments) replaced by `replacement(n)`.
    package func sql(replacingPlaceholders replacement: (Int) -> String) -> String {
        var text = ""
        text.reserveCapacity(sql.utf8.count + 16)
        for piece in LocalSQLScan.cached(sql).pieces {
            switch piece {
            case .text(let part): text += part
            case .placeholder(let number): text += replacement(number)
            }
        }
        return text
    }
}

/// One pass over a statement: its placeholders outside literals and comments, and its first
/// keyword.
struct LocalSQLScan: Sendable {
    /// Scans of the statements seen lately: a service runs a few statements over and over, and
    /// a scan costs more than a lookup (measured: 2 % of a participant's CPU at C = 50).
    private static let recent = Mutex<[String: LocalSQLScan]>([:])
    /// The most scans kept; the cache starts over when it is full.
    static let cacheCapacity = 256

    /// The scan of `sql`, from the cache when it was scanned lately.
    static func cached(_ sql: String) -> LocalSQLScan {
        if let known = recent.withLock({ $0[sql] }) { return known }
        let scan = LocalSQLScan(sql)
        recent.withLock { recent in
            if recent.count >= cacheCapacity { recent.removeAll(keepingCapacity: true) }
            recent[sql] = scan
        }
        return scan
    }

    private(set) var highestPlaceholder = 0
    private(set) var rewritten = ""
    private(set) var firstKeyword: String?
    /// The statement as text between its placeholders.
    private(set) var pieces: [Piece] = []

    /// Text of the statement, or a placeholder `$n`.
    enum Piece: Sendable, Hashable {
        case text(String)
        case placeholder(Int)
    }

    init(_ sql: String) {
        let characters = Array(sql.unicodeScalars)
        var output = String.UnicodeScalarView()
        var index = 0
        var pieceStart = 0
        func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }
        func isWordCharacter(_ c: Unicode.Scalar) -> Bool { c == "_" || c.properties.isAlphabetic || isDigit(c) }
        while index < characters.count {
            let c = characters[index]
            let next = index + 1 < characters.count ? characters[index + 1] : nil
            switch c {
            case "'", "\"", "`":
                // A literal or quoted identifier; a doubled quote inside is an escaped quote,
                // which this handles as two adjacent literals.
                var end = index + 1
                while end < characters.count, characters[end] != c { end += 1 }
                end = min(end + 1, characters.count)
                output.append(contentsOf: characters[index..<end])
                index = end
            case "-" where next == "-":
                var end = index
                while end < characters.count, characters[end] != "\n" { end += 1 }
                output.append(contentsOf: characters[index..<end])
                index = end
            case "/" where next == "*":
                var end = index + 2
                while end + 1 < characters.count, !(characters[end] == "*" && characters[end + 1] == "/") { end += 1 }
                end = min(end + 2, characters.count)
                output.append(contentsOf: characters[index..<end])
                index = end
            case "$" where next.map(isDigit) == true:
                var end = index + 1
                while end < characters.count, isDigit(characters[end]) { end += 1 }
                let number = Int(String(String.UnicodeScalarView(characters[(index + 1)..<end]))) ?? 0
                highestPlaceholder = max(highestPlaceholder, number)
                pieces.append(.text(String(String.UnicodeScalarView(characters[pieceStart..<index]))))
                pieces.append(.placeholder(number))
                pieceStart = end
                output.append("?")
                output.append(contentsOf: characters[(index + 1)..<end])
                index = end
            case "$":
                // A PostgreSQL dollar-quoted string ($$…$$ or $tag$…$tag$): skip to its end.
                var tagEnd = index + 1
                while tagEnd < characters.count, characters[tagEnd] != "$", isWordCharacter(characters[tagEnd]) { tagEnd += 1 }
                if tagEnd < characters.count, characters[tagEnd] == "$" {
                    let tag = Array(characters[index...tagEnd])
                    var end = tagEnd + 1
                    while end + tag.count <= characters.count, Array(characters[end..<(end + tag.count)]) != tag { end += 1 }
                    end = min(end + tag.count, characters.count)
                    output.append(contentsOf: characters[index..<end])
                    index = end
                } else {
                    output.append(c)
                    index += 1
                }
            default:
                if firstKeyword == nil, isWordCharacter(c) {
                    var end = index
                    while end < characters.count, isWordCharacter(characters[end]) { end += 1 }
                    firstKeyword = String(String.UnicodeScalarView(characters[index..<end]))
                    output.append(contentsOf: characters[index..<end])
                    index = end
                } else {
                    output.append(c)
                    index += 1
                }
            }
        }
        rewritten = String(output)
        pieces.append(.text(String(String.UnicodeScalarView(characters[pieceStart..<characters.count]))))
    }
}
