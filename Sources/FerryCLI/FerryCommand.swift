import ArgumentParser
import FerryCore
import FerrySystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The `ferry` command: device and host faces of the updater.
public struct FerryCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Safe A/B partition updates for embedded Linux devices.",
        discussion: """
            Device commands read the system configuration (--config, else $FERRY_CONFIG, else \
            /etc/ferry/system.json); --config and --verbose go before or after the command. Every failure prints one line 'ferry: error: ...' and exits \
            with the status documented in docs/errors.md (--verbose adds the cause chain).
            """,
        version: FerryVersion.current,
        subcommands: [
            Status.self, Install.self, Check.self, Update.self, Apps.self, Settings.self, WriteSlot.self, Mark.self,
            BootCheck.self, Env.self, Bundle.self, Delta.self,
            Pin.self,
        ]
    )

    public init() {}

    /// Parses `arguments`, runs the command, and exits with the status `execute` returns.
    public static func mainWithFerryErrors(_ arguments: [String]? = nil) async -> Never {
        MemoryPolicy.apply()
        let status = await execute(arguments ?? Array(CommandLine.arguments.dropFirst()))
        Glibc.exit(status)
    }

    /// Parses `arguments` and runs the command: 0 on success, 2 on a usage error, and the
    /// documented status of a `FerryError` otherwise, after one line on standard error.
    public static func execute(_ arguments: [String]) async -> Int32 {
        let verbose = arguments.contains("--verbose")
        do {
            var command = try parseAsRoot(GlobalOptions.normalized(arguments))
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return 0
        } catch let error as FerryError {
            report(error, verbose: verbose)
            return error.code.exitStatus
        } catch {
            let status = exitCode(for: error)
            if status == .success {
                Terminal.writeOutput(fullMessage(for: error) + "\n")
                return 0
            }
            if error is ExitCode { return status.rawValue }
            // Usage errors: ArgumentParser's message and usage, exit 2 (docs/errors.md).
            Terminal.writeError(fullMessage(for: error) + "\n")
            return FerryError.Code.usage.exitStatus
        }
    }

    static func report(_ error: FerryError, verbose: Bool) {
        Terminal.writeError(errorLine(error))
        if verbose { Terminal.writeError(error.detailedDescription() + "\n") }
    }

    /// The one line printed for an error: `ferry: error: <message>` (newlines in it folded).
    public static func errorLine(_ error: FerryError) -> String {
        let line = error.message.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: " ")
        return "ferry: error: \(line)\n"
    }

    /// The help text of `ferry <command…>`, as `--help` prints it.
    public static func helpText(for command: [String], columns: Int) -> String {
        var type: any ParsableCommand.Type = FerryCommand.self
        for name in command {
            guard let next = type.configuration.subcommands.first(where: { $0._commandName == name }) else { break }
            type = next
        }
        return helpMessage(for: type, columns: columns) + "\n"
    }
}

/// Marks a command with the global options (an option group of ``GlobalOptions``): they may be
/// given before its name too (``GlobalOptions/normalized(_:)``). ConventionsTests checks every
/// command's mark against its help.
protocol TakesGlobalOptions {}

/// Options every device command takes.
public struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The system configuration file.", valueName: "system.json"))
    public var config: String?

    @Flag(name: .long, help: "Log debug messages and print the cause chain of errors.")
    public var verbose = false

    public init() {}

    /// `arguments` with the global options moved where ArgumentParser reads them: after the
    /// subcommand, so that `ferry --config X status` means `ferry status --config X` (as git, RAUC
    /// and SWUpdate accept them on either side). A command without the global options (the host
    /// commands) still takes `--verbose` anywhere: its effect (logging, the cause chain) is global.
    static func normalized(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var rest = arguments[...]
        while let first = rest.first {
            if first == "--verbose" {
                leading.append(first)
                rest = rest.dropFirst()
            } else if first == "--config", rest.count >= 2 {
                leading += rest.prefix(2)
                rest = rest.dropFirst(2)
            } else if first.hasPrefix("--config=") {
                leading.append(first)
                rest = rest.dropFirst()
            } else {
                break
            }
        }
        // The subcommand path: the names that follow, as long as each is a subcommand.
        var type: any ParsableCommand.Type = FerryCommand.self
        var path: [String] = []
        while let name = rest.first, let next = type.configuration.subcommands.first(where: { $0._commandName == name })
        {
            type = next
            path.append(name)
            rest = rest.dropFirst()
        }
        var tail = Array(rest)
        if !acceptsGlobalOptions(type) {
            // Only --verbose is dropped (it acts through the process's arguments); --config stays,
            // for ArgumentParser to refuse as an option this command does not have.
            leading.removeAll { $0 == "--verbose" }
            if let separator = tail.firstIndex(of: "--") {
                tail = tail[..<separator].filter { $0 != "--verbose" } + tail[separator...]
            } else {
                tail.removeAll { $0 == "--verbose" }
            }
        }
        return path + leading + tail
    }

    /// Whether a command declares the global options (``TakesGlobalOptions``).
    public static func acceptsGlobalOptions(_ type: any ParsableCommand.Type) -> Bool {
        type is any TakesGlobalOptions.Type
    }

    /// Loads the system configuration named by --config, $FERRY_CONFIG or the default path.
    func loadConfiguration() throws(FerryError) -> SystemConfiguration {
        try SystemConfiguration.load(
            SystemConfiguration.locate(explicit: config, environment: ProcessEnvironment.variables))
    }
}

/// Ferry's version, printed by `ferry --version`.
public enum FerryVersion {
    public static let current = "0.1.0"
}

/// Writing to the standard streams without Foundation.
enum Terminal {
    /// Writes to standard error, unbuffered.
    static func writeError(_ text: String) { writeAll(text, to: 2) }

    /// Writes to standard output, unbuffered, so that progress and errors keep their order on a
    /// console or in a log.
    static func writeOutput(_ text: String) { writeAll(text, to: 1) }

    private static func writeAll(_ text: String, to descriptor: Int32) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes {
                write(descriptor, $0.baseAddress! + offset, $0.count - offset)
            }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return }
            offset += written
        }
    }
}
