import ArgumentParser
import FerryCrypto
import FerryJSON
import FerryNet
import FerrySystem

extension FerryCommand {
    /// `ferry pin <https-url | certificate.pem>`: the pins to put into a device's tlsPins.
    struct Pin: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the TLS pins of a server (or of a certificate file) for tlsPins.",
            discussion: """
                With an https:// URL, Ferry connects and completes a TLS 1.2 or 1.3 handshake, then \
                hangs up: no HTTP request is sent. It prints what the server presented, trusted or \
                not, so compare it with the certificate you expect (or give the certificate file \
                instead of the URL). The certificate pin changes with every renewal; the public-key \
                pin survives renewals that keep the key. Configure one or both; several pins allow \
                rotation.
                """)

        @Argument(help: "An https:// URL of the server, or a PEM certificate file.")
        var source: String

        @Option(name: .customLong("connect-timeout"), help: "Seconds to connect and complete the handshake.")
        var connectTimeout = 20

        @Flag(name: .long, help: "Print machine-readable JSON.")
        var json = false

        func validate() throws {
            guard (1...3600).contains(connectTimeout) else {
                throw ValidationError("--connect-timeout must be between 1 and 3600")
            }
        }

        func run() async throws {
            var facts: [(String, String)]
            if source.contains("://") {
                var options = TransportOptions()
                options.connectTimeoutSeconds = connectTimeout
                let presented = try TLSProbe.certificate(of: source, options: options)
                facts = [
                    ("certificate", presented.certificatePin.description),
                    ("publicKey", presented.publicKeyPin.description),
                    ("subject", presented.subject), ("issuer", presented.issuer), ("notBefore", presented.notBefore),
                    ("notAfter", presented.notAfter), ("protocol", presented.protocolVersion),
                ]
            } else {
                guard let certificate = try Certificate.load(pemFile: source).first else { return }
                facts = [
                    ("certificate", TLSPin(kind: .certificate, sha256: certificate.fingerprint.bytes).description),
                    ("publicKey", TLSPin(kind: .publicKey, sha256: certificate.publicKeyFingerprint.bytes).description),
                    ("subject", certificate.subject), ("issuer", certificate.issuer),
                    ("notBefore", WallClock.iso8601(certificate.notBefore)),
                    ("notAfter", WallClock.iso8601(certificate.notAfter)),
                ]
            }
            if json {
                var object: [String: JSONValue] = ["source": .string(source)]
                for (key, value) in facts { object[key] = .string(value) }
                Terminal.writeOutput(String(decoding: JSONValue.object(object).serialized(), as: UTF8.self))
                return
            }
            let labels = [
                "certificate": "Certificate pin:", "publicKey": "Public-key pin:", "subject": "Subject:",
                "issuer": "Issuer:",
                "notBefore": "Valid from:", "notAfter": "Valid until:", "protocol": "Protocol:",
            ]
            let lines = facts.map { key, value in (labels[key] ?? key).padding(to: 18) + value }
            Terminal.writeOutput(lines.joined(separator: "\n") + "\n")
        }
    }
}

extension String {
    fileprivate func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
