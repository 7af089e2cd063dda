import Foundation
import Logging
import ServiceLifecycle

/// Records in the store, every interval, that this participant process runs, which service it
/// is and which commands it handles (``ParticipantInstance``); forgets it on a graceful stop. The
/// operator's tools read these records to say which service a saga waits for and whether any of
/// its processes is alive.
struct PresenceReporter: Sendable {
    let store: any SagaStore
    let interval: Duration
    let logger: Logger
    private let record: ParticipantInstance

    init(store: any SagaStore, topology: String, service: String, commands: [String], interval: Duration, logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
        let now = Date()
        let process = ProcessInfo.processInfo
        self.record = ParticipantInstance(
            topology: topology, service: service,
            instance: "\(process.hostName):\(process.processIdentifier):\(UUID().uuidString.prefix(8).lowercased())",
            commands: commands, startedAt: now, lastSeen: now, reportInterval: interval)
    }

    /// Reports until cancelled or gracefully shut down, then removes the record (a process killed
    /// leaves it, and the tools see it stop reporting). A store that keeps no participants is
    /// told once and not again.
    func run() async {
        var record = self.record
        var failing = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            record.lastSeen = Date()
            do {
                try await store.recordParticipant(record)
                failing = false
            } catch let error as SagaError where error.code == .unsupported {
                logger.debug("the store keeps no participants; the tools will not know this process: \(error.message)")
                return
            } catch {
                // The store's outage is reported by the steps that need it; say it here once.
                if !failing {
                    logger.debug("could not record this participant in the store; trying again", metadata: ["error": "\(error)"])
                }
                failing = true
            }
            do { try await gracefulSleep(interval) } catch { break }
        }
        do {
            try await store.removeParticipant(topology: record.topology, service: record.service, instance: record.instance)
        } catch {
            logger.debug("could not remove this participant's record from the store", metadata: ["error": "\(error)"])
        }
    }
}
