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
    /// `ferry bundle index`.
    struct Index: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write and sign the update index for a set of bundles (host side).",
            discussion: """
                Reads each bundle's manifest and hashes the file; the index lists them by file name \
                (serve the index and the bundles from one folder). Writes <output> and one detached \
                signature per signer beside it, <output>.1.p7s, .2.p7s, … (docs/update-index.md). \
                The serial must grow with every index published: devices refuse an older one.
                """)
        @Option(name: .shortAndLong, help: ArgumentHelp("The index file to write (index.json).", valueName: "file"))
        var output: String
        @Option(help: "The index's serial: larger than every index published before.")
        var serial: Int64
        @Option(
            help: ArgumentHelp(
                "When devices stop accepting the index (UTC; default: 30 days from now).", valueName: "time"))
        var expires: String?
        @Option(
            name: .customLong("cert"),
            help: ArgumentHelp("A signer's certificate (PEM); repeat per signer.", valueName: "pem"))
        var certificates: [String] = []
        @Option(name: .customLong("key"), help: ArgumentHelp("That signer's private key (PEM).", valueName: "pem"))
        var keys: [String] = []
        @Argument(help: "The bundles to list.")
        var bundles: [String]

        func validate() throws {
            guard serial >= 0 else { throw ValidationError("--serial must not be negative") }
            guard !certificates.isEmpty, certificates.count == keys.count else {
                throw ValidationError("give --cert and --key in pairs, at least one pair")
            }
            guard !bundles.isEmpty else { throw ValidationError("give at least one bundle") }
            if let expires, WallClock.parseISO8601(expires) == nil {
                throw ValidationError("--expires '\(expires)' is not a UTC time like 2027-01-01T00:00:00Z")
            }
        }

        func run() async throws {
            let now = WallClock.now()
            // (An expiry in the past is refused before the bundles are read: every device would refuse the index.)
            if let expires = expires.flatMap(WallClock.parseISO8601) {
                try TrustPolicy.checkExpiry(expires, of: "the update index", at: now)
            }
            var entries: [UpdateIndex.Entry] = []
            for bundle in bundles { entries.append(try UpdateIndex.entry(forBundleAt: bundle)) }
            let index = UpdateIndex(
                serial: serial, created: now, expires: expires.flatMap(WallClock.parseISO8601) ?? now + 30 * 86_400,
                entries: entries)
            try index.publish(
                to: Paths.absolute(output),
                signers: zip(certificates, keys).map { UpdateIndex.Signer(certificate: $0, key: $1) }, now: now)
            Terminal.writeOutput(
                "Wrote \(self.output): serial \(serial), \(entries.count) bundle(s), \(certificates.count) signature(s), "
                    + "expires \(WallClock.iso8601(index.expires)).\n")
        }
    }
}
