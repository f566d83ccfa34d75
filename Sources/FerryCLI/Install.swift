import ArgumentParser
import FerryCore
import FerryNet
import FerrySystem

extension FerryCommand {
    /// `ferry install <bundle | ->`.
    struct Install: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            abstract: "Verify a bundle and install it into the inactive slot group, then make that group primary.",
            discussion: """
                Nothing is written before the bundle's signatures and the device's policy pass; the \
                target group is marked bad first; every chunk is checked against its hash before it \
                is written; every slot is read back before the switch. Reboot, then confirm with \
                'ferry boot-check' or 'ferry mark good'. An \
                https:// bundle is streamed, never stored: the server must match a pin in tlsPins, \
                and a dropped connection resumes with a range request. An install cut at any point \
                (power loss, kill) continues from its last checkpoint when started again with the \
                same bundle (over HTTPS, without downloading again what was written); --abort \
                drops that journal; a journal of another bundle never blocks an install.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The bundle file, - for standard input, or an https:// URL (pinned TLS, streamed, resumable).")
        var bundle: String?

        @Flag(help: "Drop the journal of an interrupted install (the next install starts from the beginning).")
        var abort = false

        @Flag(
            name: .customLong("allow-downgrade"),
            help: "Accept a version older than the booted one (never below the security floor).")
        var allowDowngrade = false

        @Flag(help: "Install even while the booted group is on trial (not yet confirmed).")
        var force = false

        @Option(help: "Progress: a bar on a terminal, plain lines otherwise (auto), or bar, lines, json.")
        var progress: ProgressMode = .auto

        /// Bytes between checkpoints, in MiB (tests use small values to checkpoint inside small slots).
        @Option(name: .customLong("checkpoint-mib"), help: .hidden)
        var checkpointMiB: Int?

        func validate() throws {
            if abort == (bundle != nil) { throw ValidationError("give a bundle to install, or --abort") }
            if let checkpointMiB, checkpointMiB < 1 { throw ValidationError("--checkpoint-mib must be at least 1") }
        }

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "install")
            if abort {
                let store = StateStore(directory: context.configuration.stateDirectory)
                let journal = store.installJournal()
                try store.removeInstallJournal()
                Terminal.writeOutput(
                    journal.map {
                        "Dropped the journal of the interrupted install of \($0.bundle) into group \($0.target) (it stays marked bad).\n"
                    }
                        ?? "No interrupted install.\n")
                return
            }
            let bundle = self.bundle!
            var installer = Installer(
                configuration: context.configuration, booted: context.booted, logger: context.logger)
            if let checkpointMiB { installer.checkpointBytes = Int64(checkpointMiB) << 20 }
            let renderer = ProgressRenderer(mode: progress)
            installer.progress = { renderer.handle($0) }
            let source: any ByteSource
            let name: String
            if bundle.contains("://") {
                source = try HTTPSource(url: bundle, options: context.configuration.transport, logger: context.logger)
                name = bundle
            } else {
                source = try Bundle.source(bundle)
                name = bundle == "-" ? "standard input" : String(bundle.split(separator: "/").last ?? "")
            }
            let result: Installer.Result
            do {
                result = try installer.install(
                    from: source, bundleName: name, allowDowngrade: allowDowngrade, force: force)
            } catch {
                throw Installer.explainingResume(error, stateDirectory: context.configuration.stateDirectory)
            }
            Terminal.writeOutput(Self.describe(result))
        }

        /// What an install did, in one line: `install` and `update` print the same.
        static func describe(_ result: Installer.Result) -> String {
            let installed = (result.resumed ? "Resumed and installed " : "Installed ")
            if !result.apps.isEmpty && result.slots.isEmpty {
                return installed + "and activated \(result.apps.joined(separator: ", ")) (no reboot needed).\n"
            }
            let bootloaders =
                result.bootloaders.isEmpty
                ? "" : "; bootloader \(result.bootloaders.joined(separator: ", ")) switched after its read-back"
            let inPlace = result.slots.filter { slot in !result.bootloaders.contains { $0.hasPrefix(slot + " (") } }
            if result.target.isEmpty {
                return installed + "\(result.version)"
                    + (inPlace.isEmpty ? "" : " in place into single-copy \(inPlace.joined(separator: ", "))")
                    + bootloaders + (result.apps.isEmpty ? "" : "; activated \(result.apps.joined(separator: ", "))")
                    + "; no group switch.\n"
            }
            return installed + "\(result.version) into group \(result.target) (\(result.slots.joined(separator: ", ")))"
                + (result.copied.isEmpty
                    ? "" : "; \(result.copied.joined(separator: ", ")) made consistent with the booted group")
                + bootloaders
                + (result.apps.isEmpty
                    ? "" : "; staged \(result.apps.joined(separator: ", ")) until the group is confirmed")
                + "\(result.adoptedKeyring ? "; adopted the bundle's new keyring" : "")"
                + "; group \(result.target) is now primary: reboot, then confirm.\n"
        }
    }
}
