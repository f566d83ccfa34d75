import ArgumentParser
import FerryBundle
import FerryCrypto
import FerrySystem

extension FerryCommand.Bundle {
    /// `ferry bundle encrypt`.
    struct Encrypt: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Address an encrypted bundle to other recipients, without signing it again (host side).",
            discussion: """
                Opens the bundle's content-key envelope with --device-key (a key of one of its \
                recipients) and writes the same bundle with a new envelope of the same key for the \
                --encrypt-to certificates: the manifest, its signatures and the sealed payloads are \
                kept byte for byte, so the result passes 'ferry bundle verify' as the original did. \
                A bundle that is not encrypted cannot be: its signed manifest would change \
                (use 'ferry bundle create --encrypt-to'). See docs/encryption.md.
                """)
        @Argument(help: "The encrypted bundle, or - for standard input.")
        var bundle: String
        @Option(
            name: .customLong("encrypt-to"),
            help: ArgumentHelp("A recipient certificate (PEM, RSA or EC key); repeat.", valueName: "pem"))
        var encryptTo: [String] = []
        @Option(
            name: .customLong("rsa-padding"),
            help: ArgumentHelp(
                "How the content key is encrypted to RSA recipients: oaep (RSA-OAEP, SHA-256), or pkcs1 (PKCS #1 v1.5) for key providers that decrypt nothing else, such as tpm2-openssl 1.1.1.",
                valueName: "oaep|pkcs1"))
        var rsaPadding: Envelope.RSAPadding = .oaep
        @OptionGroup var decryption: DecryptionOptions
        @Option(name: .shortAndLong, help: "The bundle file to write.")
        var output: String

        func validate() throws {
            guard !encryptTo.isEmpty else { throw ValidationError("give at least one --encrypt-to certificate") }
            guard decryption.key != nil else {
                throw ValidationError("give --device-key: a key that opens the bundle's envelope")
            }
        }

        func run() async throws {
            guard let key = try decryption.load() else { return }
            let manifest = try BundleWriter.readdress(
                try FerryCommand.Bundle.source(bundle), recipients: encryptTo.map(Paths.absolute),
                rsaPadding: rsaPadding, key: key,
                output: Paths.absolute(output))
            Terminal.writeOutput(
                "Wrote \(output): \(manifest.compatible) \(manifest.version), the same signed bundle, its content key addressed to \(encryptTo.count) recipient certificate file(s).\n"
            )
        }
    }
}

extension Envelope.RSAPadding: ExpressibleByArgument {}
