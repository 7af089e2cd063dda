import Foundation
import GRDB
public import SagaCore

extension SQLiteSagaStore {
    /// Keeps the definition's canonical document in `saga_definitions`; identical content again
    /// is a no-op.
    /// - Throws: `invalidDefinition` listing the differences when the same name and version
    ///   holds other content.
    public func register(_ definition: SagaDefinition) async throws {
        let document = String(decoding: definition.canonicalJSON(), as: UTF8.self)
        let hash = definition.contentHash
        let now = StoreCoding.milliseconds(Date())
        let stored = try await write("register a saga definition in") { db -> (hash: String, document: String)? in
            try db.execute(
                sql: """
                    INSERT INTO saga_definitions (name, version, hash, document, registered_at) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (name, version) DO NOTHING
                    """,
                arguments: [definition.name, definition.version, hash, document, now])
            guard db.changesCount == 0 else { return nil }
            let row = try Row.fetchOne(
                db, sql: "SELECT hash, document FROM saga_definitions WHERE name = ? AND version = ?",
                arguments: [definition.name, definition.version])
            return row.map { ($0["hash"], $0["document"]) }
        }
        guard let stored, stored.hash != hash else { return }
        throw definition.conflict(with: try SagaDefinition(canonicalJSON: Array(stored.document.utf8)))
    }

    /// The definition registered under that name and version.
    /// - Throws: `unknownDefinition`.
    public func definition(named name: String, version: Int) async throws -> SagaDefinition {
        let document = try await read("read a saga definition from") { db in
            try String.fetchOne(
                db, sql: "SELECT document FROM saga_definitions WHERE name = ? AND version = ?", arguments: [name, version])
        }
        guard let document else { throw SagaDefinition.unknown(named: name, version: version) }
        return try SagaDefinition(canonicalJSON: Array(document.utf8))
    }

    /// Every registered definition, by name then version.
    public func definitions() async throws -> [StoredDefinitionInfo] {
        try await read("list saga definitions in") { db in
            try Row.fetchAll(db, sql: "SELECT name, version, hash, registered_at FROM saga_definitions ORDER BY name, version").map {
                StoredDefinitionInfo(
                    name: $0["name"], version: $0["version"], hash: $0["hash"],
                    registeredAt: StoreCoding.date(milliseconds: $0["registered_at"]))
            }
        }
    }
}
