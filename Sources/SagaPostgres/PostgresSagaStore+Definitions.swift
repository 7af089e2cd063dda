import Foundation
import PostgresNIO
public import SagaCore

extension PostgresSagaStore {
    /// Keeps the definition's canonical document in `saga_definitions`; identical content again
    /// is a no-op.
    /// - Throws: `invalidDefinition` listing the differences when the same name and version
    ///   holds other content.
    public func register(_ definition: SagaDefinition) async throws {
        let document = String(decoding: definition.canonicalJSON(), as: UTF8.self)
        let hash = definition.contentHash
        let name = definition.name
        let version = definition.version
        let inserted = try await rows(
            "register a saga definition",
            """
            INSERT INTO \(unescaped: namespace).saga_definitions (name, version, hash, document)
            VALUES (\(name), \(version), \(hash), \(document))
            ON CONFLICT (name, version) DO NOTHING
            RETURNING hash
            """
        )
        guard inserted.isEmpty else { return }
        let stored = try await rows(
            "read a saga definition",
            """
            SELECT hash, document FROM \(unescaped: namespace).saga_definitions WHERE name = \(name) AND version = \(version)
            """
        )
        guard let row = stored.first, try row["hash"].decode(String.self) != hash else { return }
        let storedDocument = try row["document"].decode(String.self)
        throw definition.conflict(with: try SagaDefinition(canonicalJSON: Array(storedDocument.utf8)))
    }

    /// The definition registered under that name and version.
    /// - Throws: `unknownDefinition`.
    public func definition(named name: String, version: Int) async throws -> SagaDefinition {
        let stored = try await rows(
            "read a saga definition",
            """
            SELECT document FROM \(unescaped: namespace).saga_definitions WHERE name = \(name) AND version = \(version)
            """
        )
        guard let row = stored.first else { throw SagaDefinition.unknown(named: name, version: version) }
        return try SagaDefinition(canonicalJSON: Array(try row["document"].decode(String.self).utf8))
    }

    /// Every registered definition, by name then version.
    public func definitions() async throws -> [StoredDefinitionInfo] {
        let result = try await rows(
            "list saga definitions",
            """
            SELECT name, version, hash, (extract(epoch FROM registered_at) * 1000)::int8 AS registered_at
            FROM \(unescaped: namespace).saga_definitions ORDER BY name, version
            """
        )
        return try result.map { row in
            StoredDefinitionInfo(
                name: try row["name"].decode(String.self), version: try row["version"].decode(Int.self),
                hash: try row["hash"].decode(String.self),
                registeredAt: StoreCoding.date(milliseconds: try row["registered_at"].decode(Int64.self)))
        }
    }
}
