import ArgumentParser
import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerryNet
import FerrySystem

extension FerryCommand {
    /// The exit status of `check` and `update` when nothing newer applies (docs/errors.md).
    static let upToDate = ExitCode(3)

    /// `ferry check [<index-url>]`.
    struct Check: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            abstract: "Say whether the signed update index offers an update for this device.",
            discussion: """
                Reads the index (default: updateURL from the configuration) and its signatures over \
                pinned HTTPS, verifies them like a bundle's, refuses an expired index or one older than \
                the last accepted (its serial), and picks the newest version for this device: a delta \
                from the booted images when one is offered, else the full bundle. Exit 0: an update is \
                available; 3: up to date; otherwise the error's status (docs/errors.md).
                """)

        @OptionGroup var global: GlobalOptions
        @Argument(help: "The index URL (https://…/index.json); default: updateURL from the configuration.")
        var index: String?
        @Flag(help: "Print the decision as JSON (the chosen entry, its URL, the fallback).")
        var json = false

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "check")
            let decision = try UpdateCheck(
                configuration: context.configuration, booted: context.booted, logger: context.logger
            )
            .check(indexURL: index)
            Terminal.writeOutput(json ? Self.json(decision) : Self.text(decision))
            if decision.entry == nil { throw FerryCommand.upToDate }
        }

        static func text(_ decision: UpdateCheck.Decision) -> String {
            let booted = decision.bootedVersion?.description ?? "an unknown version"
            guard let entry = decision.entry else {
                return
                    "Up to date: the booted group runs \(booted); the index (serial \(decision.index.serial)) offers nothing newer.\n"
            }
            return
                "Update available: \(entry.version) (\(entry.isDelta ? "delta" : "full image"), \(entry.size) bytes) at \(decision.url(of: entry)); "
                + "the booted group runs \(booted).\n"
        }

        static func json(_ decision: UpdateCheck.Decision) -> String {
            func describe(_ entry: UpdateIndex.Entry) -> JSONValue {
                .object([
                    "version": .string(entry.version.description), "url": .string(decision.url(of: entry)),
                    "size": .number(Double(entry.size)), "sha256": .string(entry.sha256.hex),
                    "manifestSha256": .string(entry.manifestSHA256.hex),
                    "kind": .string(entry.isDelta ? "delta" : "full"),
                    "securityVersion": .number(Double(entry.securityVersion)),
                ])
            }
            var object: [String: JSONValue] = [
                "updateAvailable": .bool(decision.entry != nil), "indexSerial": .number(Double(decision.index.serial)),
                "bootedVersion": decision.bootedVersion.map { .string($0.description) } ?? .null,
            ]
            if let entry = decision.entry { object["entry"] = describe(entry) }
            if let fallback = decision.fallback { object["fallback"] = describe(fallback) }
            return String(decoding: JSONValue.object(object).serialized(), as: UTF8.self)
        }
    }

    /// `ferry update [<index-url>]`.
    struct Update: AsyncParsableCommand, TakesGlobalOptions {
        static func install(
            _ entry: UpdateIndex.Entry, decision: UpdateCheck.Decision, installer: Installer, context: DeviceContext,
            force: Bool
        ) throws(FerryError) -> Installer.Result {
            let url = decision.url(of: entry)
            Terminal.writeOutput(
                "Installing \(entry.version) (\(entry.isDelta ? "delta" : "full image")) from \(url)\n")
            let download = try HTTPSource(
                url: url, options: context.configuration.transport, logger: context.logger, expectedSize: entry.size)
            return try installer.install(
                from: IndexedBundleSource(download, entry: entry), bundleName: url, allowDowngrade: false, force: force,
                indexed: entry)
        }

        static let configuration = CommandConfiguration(
            abstract: "Check the update index and install the best update it offers for this device.",
            discussion: """
                As 'ferry check', then installs the chosen bundle streamed over pinned HTTPS, as \
                'ferry install' does (verified, resumable, read back, then made primary). A delta whose \
                source check fails on this device falls back to the full bundle of the same version. \
                Reboot, then confirm with 'ferry boot-check' or 'ferry mark good'. Exit 3 when up to date.
                """)

        @OptionGroup var global: GlobalOptions
        @Argument(help: "The index URL (https://…/index.json); default: updateURL from the configuration.")
        var index: String?
        @Flag(help: "Install even while the booted group is on trial (not yet confirmed).")
        var force = false
        @Option(help: "Progress: a bar on a terminal, plain lines otherwise (auto), or bar, lines, json.")
        var progress: ProgressMode = .auto
        /// Bytes between checkpoints, in MiB (tests use small values to checkpoint inside small slots).
        @Option(name: .customLong("checkpoint-mib"), help: .hidden)
        var checkpointMiB: Int?

        func validate() throws {
            if let checkpointMiB, checkpointMiB < 1 { throw ValidationError("--checkpoint-mib must be at least 1") }
        }

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "update")
            let decision = try UpdateCheck(
                configuration: context.configuration, booted: context.booted, logger: context.logger
            )
            .check(indexURL: index)
            guard let entry = decision.entry else {
                Terminal.writeOutput(Check.text(decision))
                throw FerryCommand.upToDate
            }
            var installer = Installer(
                configuration: context.configuration, booted: context.booted, logger: context.logger)
            if let checkpointMiB { installer.checkpointBytes = Int64(checkpointMiB) << 20 }
            let renderer = ProgressRenderer(mode: progress)
            installer.progress = { renderer.handle($0) }
            let result: Installer.Result
            do throws(FerryError) {
                do {
                    result = try Self.install(
                        entry, decision: decision, installer: installer, context: context, force: force)
                } catch {
                    // A delta whose source check failed wrote nothing: take the full bundle instead.
                    guard error.code == .sourceMismatch, entry.isDelta, let fallback = decision.fallback else {
                        throw error
                    }
                    Terminal.writeOutput(
                        "The delta does not apply to this device (\(error.message)); falling back to the full bundle.\n"
                    )
                    result = try Self.install(
                        fallback, decision: decision, installer: installer, context: context, force: force)
                }
            } catch {
                throw Installer.explainingResume(error, stateDirectory: context.configuration.stateDirectory)
            }
            Terminal.writeOutput(Install.describe(result))
        }
    }
}
