import ArgumentParser
import FerryBundle
import FerryCore
import FerryCrypto
import FerryDelta
import FerryJSON
import FerrySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension FerryCommand.Bundle {
    /// `ferry bundle verify`.
    struct Verify: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            abstract: "Verify a bundle completely, writing nothing.",
            discussion: """
                With --keyring (host side): signatures against that keyring and --threshold, then \
                every chunk of every payload. Without it (device side): the device's whole policy \
                from its configuration (keyring in use, threshold, deny-list, compatible, version \
                and security floor, expiry, trusted time), then every chunk.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The bundle file, or - for standard input.")
        var bundle: String
        @Option(help: ArgumentHelp("Trusted CA certificates (PEM): verify on the host.", valueName: "pem"))
        var keyring: String?
        @Option(help: "Distinct trusted signers needed (with --keyring).")
        var threshold: Int = 1
        @Flag(
            name: .customLong("allow-downgrade"),
            help: "Accept a version older than the booted one (never below the security floor).")
        var allowDowngrade = false

        func validate() throws {
            if keyring == nil && threshold != 1 { throw ValidationError("--threshold goes with --keyring") }
            guard threshold >= 1 else { throw ValidationError("--threshold must be at least 1") }
        }

        func run() async throws {
            let policy: TrustPolicy
            if let keyring {
                policy = TrustPolicy(
                    keyring: try Keyring(pemFile: keyring), threshold: threshold, denyList: [],
                    trustedTime: max(WallClock.now(), WallClock.buildTime), device: nil)
            } else {
                let context = try DeviceContext.load(global, writing: nil)
                policy = try DeviceTrust.policy(
                    configuration: context.configuration, booted: context.booted, allowDowngrade: allowDowngrade)
            }
            let (manifest, signers) = try BundleReader(source: try FerryCommand.Bundle.source(bundle))
                .verifyWhole(policy: policy, allowDowngrade: allowDowngrade)
            Terminal.writeOutput(
                "Bundle OK: \(manifest.compatible) \(manifest.version), signed by "
                    + signers.map { "\($0.subject)" }.joined(separator: ", ")
                    + "; \(manifest.payloads.count) payload(s) verified.\n")
        }
    }
}
