import ArgumentParser
import FerryCore
import FerrySystem

extension FerryCommand {
    /// `ferry install <bundle | ->`.
    struct Install: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a bundle and install it into the inactive slot group, then make that group primary.",
            discussion: """
                Nothing is written before the bundle's signatures and the device's policy pass; the \
                target group is marked bad first; every chunk is checked against its hash before it \
                is written; every slot is read back before the switch. Reboot, then confirm with \
                'ferry boot-check' or 'ferry mark good'. Resume of an interrupted install and HTTPS \
                sources are not implemented yet: an interrupted install is started again.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The bundle file, or - for standard input.")
        var bundle: String

        @Flag(name: .customLong("allow-downgrade"), help: "Accept a version older than the booted one (never below the security floor).")
        var allowDowngrade = false

        @Flag(help: "Install even while the booted group is on trial (not yet confirmed).")
        var force = false

        @Option(help: "Progress: a bar on a terminal, plain lines otherwise (auto), or bar, lines, json.")
        var progress: ProgressMode = .auto

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "install")
            var installer = Installer(configuration: context.configuration, booted: context.booted, logger: context.logger)
            let renderer = ProgressRenderer(mode: progress)
            installer.progress = { renderer.handle($0) }
            let source = try Bundle.source(bundle)
            let name = bundle == "-" ? "standard input" : String(bundle.split(separator: "/").last ?? "")
            let result = try installer.install(from: source, bundleName: name, allowDowngrade: allowDowngrade, force: force)
            Terminal.writeOutput(
                "Installed \(result.version) into group \(result.target) (\(result.slots.joined(separator: ", ")))"
                    + "\(result.adoptedKeyring ? "; adopted the bundle's new keyring" : "")"
                    + "; group \(result.target) is now primary: reboot, then confirm.\n")
        }
    }
}
