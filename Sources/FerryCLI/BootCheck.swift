import ArgumentParser
import FerryCore
import FerrySystem

extension FerryCommand {
    /// `ferry boot-check`: run once early in every boot.
    struct BootCheck: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            commandName: "boot-check",
            abstract: "Check the boot early at start-up: record a fallback, run the health check, confirm.",
            discussion: """
                Notices when the bootloader fell back (the booted group is not the one Ferry made \
                primary), records it and marks the failed group bad; runs the configured health \
                check; and confirms the booted group (mark good) unless --no-confirm is given or \
                the configuration sets confirmInBootCheck to false. Example init script and \
                systemd unit: Images/boot-check/.
                """)

        @OptionGroup var global: GlobalOptions

        @Flag(name: .long, help: "Do not confirm the booted group (leave it on trial).")
        var noConfirm = false

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "boot-check")
            let result = try context.bootControl().bootCheck(confirm: !noConfirm)
            var line = "Booted group \(result.booted)"
            if let from = result.rolledBackFrom { line += "; rolled back from \(from) (marked bad)" }
            if let passed = result.healthCheckPassed {
                line += passed ? "; health check passed" : "; health check failed"
            }
            line += result.confirmed ? "; confirmed." : "; not confirmed."
            Terminal.writeOutput(line + "\n")
        }
    }
}
