import ArgumentParser
import FerryBootloader
import FerryCore
import FerrySystem

extension FerryCommand {
    /// `ferry env list|get|set|unset`: a fw_printenv/fw_setenv/grub-editenv replacement.
    struct Env: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read and write the boot environment (U-Boot or GRUB).",
            discussion: """
                Acts on the configured environment, or on one named with --uboot-config \
                <fw_env.config> or --grub <grubenv>. Every change is one atomic transition.
                """,
            subcommands: [List.self, Get.self, Set.self, Unset.self])

        struct Source: ParsableArguments {
            @OptionGroup var global: GlobalOptions

            @Option(
                name: .customLong("uboot-config"),
                help: ArgumentHelp("A U-Boot environment described by an fw_env.config.", valueName: "fw_env.config"))
            var ubootConfig: String?

            @Option(name: .customLong("grub"), help: ArgumentHelp("A GRUB environment block.", valueName: "grubenv"))
            var grub: String?

            func validate() throws {
                if ubootConfig != nil && grub != nil {
                    throw ValidationError("give either --uboot-config or --grub, not both")
                }
            }

            /// The environment to act on, and the lock to hold while writing the configured one.
            func environment(writing: String?) throws(FerryError) -> (any BootEnvironment, FileLock?) {
                if let ubootConfig { return (try UBootEnvironment(fwEnvConfig: Paths.absolute(ubootConfig)), nil) }
                if let grub { return (GRUBEnvironment(path: Paths.absolute(grub)), nil) }
                let configuration = try global.loadConfiguration()
                guard let environment = try BootControl.makeEnvironment(configuration.bootloader) else {
                    throw FerryError(
                        code: .bootEnvironmentUnsupported,
                        message: "the custom boot chooser has no environment Ferry can edit")
                }
                let lock = try writing.map { (name) throws(FerryError) in
                    try StateStore(directory: configuration.stateDirectory).acquireWriteLock(command: name)
                }
                return (environment, lock)
            }
        }

        struct List: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(abstract: "Print every variable as name=value.")
            @OptionGroup var source: Source
            func run() async throws {
                let (environment, _) = try source.environment(writing: nil)
                let variables = try environment.read()
                Terminal.writeOutput(variables.keys.sorted().map { "\($0)=\(variables[$0]!)\n" }.joined())
            }
        }

        struct Get: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "Print the values of variables (exit 1 if one is not set).")
            @OptionGroup var source: Source
            @Argument(help: "Variable names.") var names: [String]
            func run() async throws {
                let (environment, _) = try source.environment(writing: nil)
                let variables = try environment.read()
                var missing = false
                for name in names {
                    if let value = variables[name] {
                        Terminal.writeOutput(names.count == 1 ? "\(value)\n" : "\(name)=\(value)\n")
                    } else {
                        Terminal.writeError("ferry: \(name) is not set\n")
                        missing = true
                    }
                }
                if missing { throw ExitCode(1) }
            }
        }

        struct Set: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "Set variables (name=value ...) in one atomic write.")
            @OptionGroup var source: Source
            @Argument(help: ArgumentHelp("Assignments.", valueName: "name=value")) var assignments: [String]
            func validate() throws {
                for assignment in assignments where !assignment.contains("=") || assignment.hasPrefix("=") {
                    throw ValidationError("'\(assignment)' is not name=value")
                }
            }
            func run() async throws {
                let (environment, lock) = try source.environment(writing: "env set")
                defer { lock?.release() }
                var changes: [String: String?] = [:]
                for assignment in assignments {
                    let equals = assignment.firstIndex(of: "=")!
                    changes[String(assignment[..<equals])] = String(assignment[assignment.index(after: equals)...])
                }
                try environment.update(changes)
            }
        }

        struct Unset: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(abstract: "Remove variables in one atomic write.")
            @OptionGroup var source: Source
            @Argument(help: "Variable names.") var names: [String]
            func run() async throws {
                let (environment, lock) = try source.environment(writing: "env unset")
                defer { lock?.release() }
                var changes: [String: String?] = [:]
                for name in names { changes[name] = .some(nil) }
                try environment.update(changes)
            }
        }
    }
}
