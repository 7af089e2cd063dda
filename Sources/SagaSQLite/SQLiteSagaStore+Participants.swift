import Foundation
import GRDB
public import SagaCore

extension SQLiteSagaStore {
    /// Inserts or refreshes the participant's row in `saga_participants`, and deletes the rows
    /// not refreshed for ``SagaCore/ParticipantInstance/retention``.
    public func recordParticipant(_ participant: ParticipantInstance) async throws {
        let commands = String(decoding: try JSONEncoder().encode(participant.commands), as: UTF8.self)
        let lastSeen = StoreCoding.milliseconds(participant.lastSeen)
        let oldest = StoreCoding.milliseconds(participant.lastSeen.addingTimeInterval(-ParticipantInstance.retention.seconds))
        try await write("record a participant in") { db in
            try db.execute(
                sql: """
                    INSERT INTO saga_participants (topology, service, instance, commands, started_at, last_seen, report_interval_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (topology, service, instance) DO UPDATE
                    SET commands = excluded.commands, last_seen = excluded.last_seen, report_interval_ms = excluded.report_interval_ms
                    """,
                arguments: [
                    participant.topology, participant.service, participant.instance, commands,
                    StoreCoding.milliseconds(participant.startedAt), lastSeen, participant.reportIntervalMilliseconds,
                ])
            try db.execute(sql: "DELETE FROM saga_participants WHERE last_seen < ?", arguments: [oldest])
        }
    }

    /// Deletes the participant's row.
    public func removeParticipant(topology: String, service: String, instance: String) async throws {
        try await write("remove a participant from") { db in
            try db.execute(
                sql: "DELETE FROM saga_participants WHERE topology = ? AND service = ? AND instance = ?",
                arguments: [topology, service, instance])
        }
    }

    /// Every row of `saga_participants`, by topology, service and instance.
    public func participants() async throws -> [ParticipantInstance] {
        try await read("list the participants in") { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT topology, service, instance, commands, started_at, last_seen, report_interval_ms FROM saga_participants
                    ORDER BY topology, service, instance
                    """
            ).map { row in
                let commands: String = row["commands"]
                return ParticipantInstance(
                    topology: row["topology"], service: row["service"], instance: row["instance"],
                    commands: (try? JSONDecoder().decode([String].self, from: Data(commands.utf8))) ?? [],
                    startedAt: StoreCoding.date(milliseconds: row["started_at"]),
                    lastSeen: StoreCoding.date(milliseconds: row["last_seen"]),
                    reportInterval: .milliseconds(row["report_interval_ms"] as Int64))
            }
        }
    }
}
