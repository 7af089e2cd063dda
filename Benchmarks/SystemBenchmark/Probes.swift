import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Reads what `/proc` says about a process: CPU time and memory.
enum ProcessProbe {
    /// Clock ticks per second of `/proc/<pid>/stat`'s times.
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// User + system CPU seconds of `pid` so far (0 when it is gone).
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        // Fields after "(comm) ": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / ticksPerSecond
    }

    /// The parent pid of `pid`, if it exists.
    static func parent(of pid: pid_t) -> pid_t? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        return fields.count > 1 ? pid_t(fields[1]) : nil
    }

    /// A value in kB of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MB.
    static func memoryMB(_ pid: pid_t, _ key: String) -> Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix(key + ":") {
            let number = line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Double($0) }
            return number.map { $0 / 1024 }
        }
        return nil
    }

    /// Every pid in `/proc`.
    static func allPIDs() -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }
    }

    /// The pids whose command name is `name` (`beam.smp` for the broker).
    static func pids(named name: String) -> [pid_t] {
        allPIDs().filter { pid in
            (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                == name
        }
    }

    /// The postmaster of the PostgreSQL cluster in `dataDirectory` and its children (backends).
    static func postgresPIDs(dataDirectory: String?) -> [pid_t] {
        guard let dataDirectory,
            let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
            let first = text.split(separator: "\n").first, let postmaster = pid_t(first)
        else { return [] }
        return [postmaster] + allPIDs().filter { parent(of: $0) == postmaster }
    }

    /// Busy CPU seconds of the whole machine (all cores) from `/proc/stat`.
    static func machineBusySeconds() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first
        else { return 0 }
        let values = line.split(separator: " ").dropFirst().prefix(8).compactMap { Double($0) }
        guard values.count == 8 else { return 0 }
        return (values.reduce(0, +) - values[3] - values[4]) / ticksPerSecond
    }

    /// The 1-minute load average.
    static func load1() -> Double {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").first.flatMap { Double($0) } ?? 0
    }
}

/// CPU seconds of groups of processes between ``start()`` and ``stop()``, as cores; the same
/// groups as the yardstick's `CpuProbe` (broker, postgres, participants, driver, other).
struct CPUWindow {
    /// The groups and their pids.
    var groups: [String: [pid_t]]
    private var before: [String: [pid_t: Double]] = [:]
    private var machineBefore = 0.0
    private var startedAt = ContinuousClock.now

    /// Creates a window over these groups (pids found later, such as new backends, count from 0).
    init(groups: [String: [pid_t]]) { self.groups = groups }

    private func snapshot() -> [String: [pid_t: Double]] {
        groups.mapValues { pids in Dictionary(uniqueKeysWithValues: pids.map { ($0, ProcessProbe.cpuSeconds($0)) }) }
    }

    /// Starts the window.
    mutating func start() {
        before = snapshot()
        machineBefore = ProcessProbe.machineBusySeconds()
        startedAt = .now
    }

    /// CPU seconds of each pid during the window, by group.
    private(set) var perPID: [String: [pid_t: Double]] = [:]

    /// Ends the window: cores per group, `machine_busy` and `other` (everything else).
    mutating func stop() -> [String: Double] {
        let after = snapshot()
        let wall = max((ContinuousClock.now - startedAt).seconds, 1e-9)
        var cores: [String: Double] = [:]
        for (group, pids) in after {
            var used: [pid_t: Double] = [:]
            for (pid, seconds) in pids { used[pid] = seconds - (before[group]?[pid] ?? 0) }
            perPID[group] = used
            cores[group] = used.values.reduce(0, +) / wall
        }
        let busy = (ProcessProbe.machineBusySeconds() - machineBefore) / wall
        cores["machine_busy"] = busy
        cores["other"] = busy - groups.keys.compactMap { cores[$0] }.reduce(0, +)
        return cores.mapValues { ($0 * 100).rounded() / 100 }
    }
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
