import ArgumentParser
import FerryCore
import FerryJSON
import FerrySystem

extension FerryCommand {
    /// `ferry status`: slots, groups, booted group and installed versions (read-only).
    struct Status: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            abstract: "Show the slots, the booted group and what is installed (read-only).",
            discussion: "--json prints a document whose format is described in docs/status.md.")

        @OptionGroup var global: GlobalOptions

        @Flag(name: .long, help: "Print machine-readable JSON.")
        var json = false

        func run() async throws {
            let configuration = try global.loadConfiguration()
            let report = try StatusReport.gather(
                configuration: configuration, commandLine: try KernelCommandLine.current(),
                mounts: try MountTable.current())
            if json {
                Terminal.writeOutput(String(decoding: report.json.serialized(), as: UTF8.self))
            } else {
                Terminal.writeOutput(Self.render(report))
            }
        }

        /// One slot's row: name, class, location, size, state, what is installed.
        static func row(_ slot: StatusReport.Slot) -> [String] {
            let installed: String
            if let record = slot.installed {
                let hash = record.sha256.map { " sha256 \($0.prefix(12))…" } ?? ""
                installed = "\(record.version ?? "unversioned")\(record.source.map { " (\($0))" } ?? "")\(hash)"
            } else {
                installed = "nothing recorded"
            }
            var state = slot.state
            if let strategy = slot.strategy {
                state =
                    "\(strategy), "
                    + (slot.activeRegion.map { "region \($0) selected" } ?? "unreadable: \(slot.strategyError ?? "?")")
            }
            return [slot.name, slot.slotClass, slot.location, ByteFormat.string(slot.size), state, installed]
        }

        static func render(_ report: StatusReport) -> String {
            var lines: [String] = []
            lines.append("Compatible:    \(report.compatible)")
            lines.append("Configuration: \(report.configuration)\(report.sandbox ? " (sandbox)" : "")")
            lines.append("Booted group:  \(report.booted ?? "unknown") (\(report.bootedSource))")
            lines.append("Bootloader:    \(report.bootloader)")
            let rotated = report.keyring.map { $0.hasPrefix(report.stateDirectory + "/") } ?? false
            lines.append(
                "Keyring:       \(report.keyring ?? "none configured")\(rotated ? " (rotated by a bundle)" : "") (security floor \(report.securityFloor))"
            )
            if let error = report.bootError {
                lines.append("Boot state:    unreadable: \(error)")
            } else {
                lines.append(
                    "Primary:       \(report.primary ?? "none") (boot order: \((report.bootOrder ?? []).joined(separator: " ")))"
                )
            }
            if let rollback = report.rollback {
                lines.append(
                    "Rolled back:   from \(rollback.from) to \(rollback.to ?? "?")\(rollback.at.map { " at \($0)" } ?? "")"
                )
            }
            if let record = report.groupParts {
                let names = record.parts.map {
                    $0.kind == .app ? "\($0.name) \($0.version ?? "")" : "settings \($0.name)"
                }
                let when =
                    record.state == .staged
                    ? "staged until group \(record.group) is confirmed"
                    : "\(record.state.rawValue) with group \(record.group)"
                lines.append("Bundle parts:  \(names.joined(separator: ", ")) (\(record.version), \(when))")
            }
            for group in report.groups {
                lines.append("")
                var facts: [String] = []
                if group.booted { facts.append("booted") }
                if group.primary { facts.append("primary") }
                if let boot = group.boot { facts.append(boot) }
                if let left = group.triesLeft { facts.append("\(left) tries left") }
                if group.tried == true { facts.append("tried") }
                lines.append("Group \(group.bootname)\(facts.isEmpty ? "" : " (\(facts.joined(separator: ", ")))")")
                lines.append(contentsOf: Table.render(group.slots.map(Self.row), indent: "  "))
            }
            if !report.singleCopySlots.isEmpty {
                lines.append("")
                lines.append("Single-copy slots (no A/B)")
                lines.append(contentsOf: Table.render(report.singleCopySlots.map(Self.row), indent: "  "))
            }
            return lines.joined(separator: "\n") + "\n"
        }
    }
}

/// Human byte counts ("64.0 MiB").
enum ByteFormat {
    static func string(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let tenths = (value * 10).rounded() / 10
        return "\(tenths) \(units[unit])"
    }
}

/// Left-aligned columns separated by two spaces.
enum Table {
    static func render(_ rows: [[String]], indent: String) -> [String] {
        guard let columns = rows.map(\.count).max() else { return [] }
        var widths = [Int](repeating: 0, count: columns)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        return rows.map { row in
            var line = indent
            for (index, cell) in row.enumerated() {
                line += cell
                if index < row.count - 1 { line += String(repeating: " ", count: widths[index] - cell.count + 2) }
            }
            return line
        }
    }
}
