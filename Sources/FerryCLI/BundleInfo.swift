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
    /// `ferry bundle info`.
    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a bundle's manifest (signatures are not checked: use verify).")
        @Argument(help: "The bundle file, or - for standard input.")
        var bundle: String
        @Flag(help: "Print machine-readable JSON (the manifest plus the signature members).")
        var json = false

        func run() async throws {
            let reader = BundleReader(source: try FerryCommand.Bundle.source(bundle))
            let (manifest, _) = try reader.readUnverified()
            let recipients = try reader.envelope.map { (envelope) throws(FerryError) in
                try Envelope.recipients(envelope, name: manifest.encryption?.envelope ?? "")
            }
            if json {
                var object = manifest.json.objectValue ?? [:]
                object["signatures"] = .array(reader.signatures.map { .string($0.name) })
                if let recipients { object["recipients"] = .array(recipients.map(JSONValue.string)) }
                Terminal.writeOutput(String(decoding: JSONValue.object(object).serialized(), as: UTF8.self))
                return
            }
            var lines = [
                "Compatible:       \(manifest.compatible)", "Version:          \(manifest.version)",
                "Security version: \(manifest.securityVersion)",
                "Built:            \(WallClock.iso8601(manifest.buildTime))",
                "Expires:          \(manifest.expires.map { WallClock.iso8601($0) } ?? "never")",
                "Signatures:       \(reader.signatures.count) (not checked; use 'ferry bundle verify')",
            ]
            if let description = manifest.description { lines.append("Description:      \(description)") }
            if let keyring = manifest.keyring {
                lines.append("New keyring:      \(keyring.member), \(keyring.denyList.count) denied signer(s)")
            }
            if let encryption = manifest.encryption, let recipients {
                lines.append(
                    "Encrypted:        \(encryption.cipher), content key in \(encryption.envelope) for \(recipients.count) recipient(s)"
                )
                for recipient in recipients { lines.append("  recipient:      \(recipient)") }
            }
            for payload in manifest.payloads {
                lines.append(
                    "Payload:          \(payload.type) for \(payload.target): \(payload.member), \(payload.size) bytes "
                        + "(\(payload.compression.rawValue), \(payload.storedSize) stored, \(payload.chunks.count) chunks of \(payload.chunkSize)), sha256 \(payload.sha256.hex)"
                )
                if let delta = payload.delta {
                    lines.append(
                        "  delta:          from \(delta.sourceSize) bytes sha256 \(delta.sourceSHA256.hex) to \(delta.targetSize) bytes sha256 "
                            + "\(delta.targetSHA256.hex), \(delta.sourceChecks.count) source checks")
                }
                if let bootloader = payload.bootloader {
                    lines.append(
                        "  bootloader:     strategy \(bootloader.strategy), boots groups \(bootloader.bootsGroups.joined(separator: ", "))"
                    )
                }
            }
            Terminal.writeOutput(lines.joined(separator: "\n") + "\n")
        }
    }
}
