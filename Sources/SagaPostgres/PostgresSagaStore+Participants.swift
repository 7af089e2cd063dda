import Foundation
import PostgresNIO
public import SagaCore

extension PostgresSagaStore {
    /// Inserts or refreshes the participant's row in `saga_participants`, and deletes the rows
    /// not refreshed for ``SagaCore/ParticipantInstance/retention``.
    public func recordParticipant(_ participant: ParticipantInstance) async throws {
        let startedAt = participant.startedAt.timeIntervalSince1970
        let lastSeen = participant.lastSeen.timeIntervalSince1970
        let oldest = lastSeen - ParticipantInstance.retention.seconds
        _ = try await rows(
            "record a participant",
            """
            WITH recorded AS (
                INSERT INTO \(unescaped: namespace).saga_participants (topology, service, instance, commands, started_at, last_seen, report_interval_ms)
                VALUES (\(participant.topology), \(participant.service), \(participant.instance), \(participant.commands)::text[],
                        to_timestamp(\(startedAt)), to_timestamp(\(lastSeen)), \(participant.reportIntervalMilliseconds))
                ON CONFLICT (topology, service, instance)
                DO UPDATE SET commands = excluded.commands, last_seen = excluded.last_seen, report_interval_ms = excluded.report_interval_ms
                RETURNING 1
            )
            DELETE FROM \(unescaped: namespace).saga_participants WHERE last_seen < to_timestamp(\(oldest))
            """
        )
    }

    /// Deletes the participant's row.
    public func removeParticipant(topology: String, service: String, instance: String) async throws {
        _ = try await rows(
            "remove a participant",
            """
            DELETE FROM \(unescaped: namespace).saga_participants
            WHERE topology = \(topology) AND service = \(service) AND instance = \(instance)
            """
        )
    }

    /// Every row of `saga_participants`, by topology, service and instance.
    public func participants() async throws -> [ParticipantInstance] {
        try await rows(
            "list the participants",
            """
            SELECT topology, service, instance, commands,
                   (extract(epoch FROM started_at) * 1000)::int8 AS started_at,
                   (extract(epoch FROM last_seen) * 1000)::int8 AS last_seen, report_interval_ms
            FROM \(unescaped: namespace).saga_participants ORDER BY topology, service, instance
            """
        ).map { row in
            ParticipantInstance(
                topology: try row["topology"].decode(String.self), service: try row["service"].decode(String.self),
                instance: try row["instance"].decode(String.self), commands: try row["commands"].decode([String].self),
                startedAt: Date(timeIntervalSince1970: Double(try row["started_at"].decode(Int64.self)) / 1000),
                lastSeen: Date(timeIntervalSince1970: Double(try row["last_seen"].decode(Int64.self)) / 1000),
                reportInterval: .milliseconds(try row["report_interval_ms"].decode(Int64.self)))
        }
    }
}
