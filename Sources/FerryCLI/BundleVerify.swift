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
                and security floor, expiry, trusted time), then every chunk. An encrypted bundle                 is opened with --device-key (host side) or the configuration's deviceKey (device                 side); without a key only the stored chunks' SHA-256 are checked, which the                 signature covers, and the output says so.
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
        @OptionGroup var decryption: DecryptionOptions

        func validate() throws {
            if keyring == nil && threshold != 1 { throw ValidationError("--threshold goes with --keyring") }
            guard threshold >= 1 else { throw ValidationError("--threshold must be at least 1") }
        }

        func run() async throws {
            let policy: TrustPolicy
            var key = try decryption.load()
            var configuration: SystemConfiguration? = nil
            if let keyring {
                policy = TrustPolicy(
                    keyring: try Keyring(pemFile: keyring), threshold: threshold, denyList: [],
                    trustedTime: max(WallClock.now(), WallClock.buildTime), device: nil)
            } else {
                let context = try DeviceContext.load(global, writing: nil)
                configuration = context.configuration
                policy = try DeviceTrust.policy(
                    configuration: context.configuration, booted: context.booted, allowDowngrade: allowDowngrade)
                if key == nil, context.configuration.deviceKey != nil {
                    key = try DeviceTrust.deviceKey(context.configuration, for: "")
                }
            }
            let reader = BundleReader(source: try FerryCommand.Bundle.source(bundle))
            let (manifest, signers, contentChecked) = try reader.verifyWhole(
                policy: policy, allowDowngrade: allowDowngrade, key: key,
                checkManifest: { (reader) throws(FerryError) in
                    if let configuration, reader.manifest?.encryption == nil, configuration.requireEncryption {
                        try DeviceTrust.unlock(reader, configuration: configuration)
                    }
                })
            let what =
                contentChecked
                ? "\(manifest.payloads.count) payload(s) verified\(manifest.encryption == nil ? "" : " (decrypted)")"
                : "\(manifest.payloads.count) encrypted payload(s): stored chunks verified, content not checked (no --device-key)"
            Terminal.writeOutput(
                "Bundle OK: \(manifest.compatible) \(manifest.version), signed by "
                    + signers.map { "\($0.subject)" }.joined(separator: ", ")
                    + "; \(what).\n")
        }
    }
}

/// `--device-key`, `--device-cert`, `--provider`: the key that opens an encrypted bundle on the
/// host (the device side uses its configuration's deviceKey).
struct DecryptionOptions: ParsableArguments {
    @Option(
        name: .customLong("device-key"),
        help: ArgumentHelp(
            "A recipient's private key that opens an encrypted bundle: a PEM file, or a provider's URI (handle:0x81000001).",
            valueName: "pem|uri"))
    var key: String?
    @Option(
        name: .customLong("device-cert"),
        help: ArgumentHelp("That recipient's certificate (PEM): which envelope entry is its.", valueName: "pem"))
    var certificate: String?
    @Option(
        name: .customLong("provider"),
        help: ArgumentHelp("An OpenSSL provider to load for --device-key (tpm2, pkcs11); repeat.", valueName: "name"))
    var providers: [String] = []

    func validate() throws {
        if key == nil && (certificate != nil || !providers.isEmpty) {
            throw ValidationError("--device-cert and --provider go with --device-key")
        }
    }

    /// The key, loaded; nil without --device-key.
    func load() throws(FerryError) -> DeviceKey? {
        guard let key else { return nil }
        return try DeviceKey(uri: key, certificatePath: certificate, providers: providers, opensslConfig: nil)
    }
}
