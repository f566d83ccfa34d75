import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// Detached CMS signatures, both directions with the real `openssl cms`.
@Suite struct CMSTests {
    static let content = Array("{\"compatible\": \"test\", \"version\": \"1.2.3\"}\n".utf8)

    func now() -> Int64 { WallClock.now() }

    func opensslVerify(_ pki: TestPKI, signature: String, content: String) throws -> Int32 {
        try Shell.run([
            "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", signature, "-content", content, "-CAfile",
            pki.keyring, "-purpose", "any", "-out", "/dev/null",
        ]).status
    }

    @Test func opensslAcceptsFerrySignatures() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki")
            let signature = try CMS.sign(
                content: Self.content, certificatePath: pki.certificate("signer1"), keyPath: pki.key("signer1"))
            try makeFile("\(dir)/manifest.json", bytes: Self.content)
            try makeFile("\(dir)/manifest.json.1.p7s", bytes: signature)
            #expect(
                try opensslVerify(pki, signature: "\(dir)/manifest.json.1.p7s", content: "\(dir)/manifest.json") == 0)
            // And Ferry accepts its own signature, naming the signer.
            let signer = try CMS.verify(
                signature: signature, content: Self.content, keyring: Keyring(pemFile: pki.keyring), at: now(),
                name: "sig")
            #expect(signer.subject.contains("CN=signer1"))
            let der = try Shell.check([
                "sh", "-c", "openssl x509 -in \(pki.certificate("signer1")) -outform DER | sha256sum",
            ])
            #expect(der.hasPrefix(signer.fingerprint.hex))
        }
    }

    @Test func ferryAcceptsOpensslSignatures() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki")
            try makeFile("\(dir)/manifest.json", bytes: Self.content)
            try Shell.check([
                "openssl", "cms", "-sign", "-binary", "-in", "\(dir)/manifest.json", "-signer",
                pki.certificate("signer2"),
                "-inkey", pki.key("signer2"), "-outform", "DER", "-out", "\(dir)/sig.p7s",
            ])
            let signer = try CMS.verify(
                signature: readFile("\(dir)/sig.p7s"), content: Self.content, keyring: Keyring(pemFile: pki.keyring),
                at: now(), name: "sig")
            #expect(signer.subject.contains("CN=signer2"))
        }
    }

    @Test func rejections() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki")
            let keyring = try Keyring(pemFile: pki.keyring)
            func sign(_ name: String) throws -> [UInt8] {
                try CMS.sign(content: Self.content, certificatePath: pki.certificate(name), keyPath: pki.key(name))
            }
            let good = try sign("signer1")
            // Tampered content.
            var tampered = Self.content
            tampered[3] ^= 1
            expectFerryError(.signatureInvalid) {
                try CMS.verify(signature: good, content: tampered, keyring: keyring, at: now(), name: "sig")
            }
            // A signer from an unrelated CA.
            expectFerryError(.untrusted) {
                try CMS.verify(
                    signature: sign("stranger"), content: Self.content, keyring: keyring, at: now(), name: "sig")
            }
            // A certificate whose extended key usage does not allow code signing.
            expectFerryError(.untrusted) {
                try CMS.verify(
                    signature: sign("serverauth"), content: Self.content, keyring: keyring, at: now(), name: "sig")
            }
            // Judged at a time after the certificate expired, and before it was valid (a clock in 1970).
            let signer = try CMS.verify(
                signature: good, content: Self.content, keyring: keyring, at: now(), name: "sig")
            expectFerryError(.expired) {
                try CMS.verify(
                    signature: good, content: Self.content, keyring: keyring, at: signer.notAfter + 86_400, name: "sig")
            }
            expectFerryError(.expired) {
                try CMS.verify(signature: good, content: Self.content, keyring: keyring, at: 0, name: "sig")
            }
            // Garbage, a truncated signature, and an oversized one.
            expectFerryError(.signatureInvalid) {
                try CMS.verify(
                    signature: seededBytes(count: 600, seed: 1), content: Self.content, keyring: keyring, at: now(),
                    name: "sig")
            }
            expectFerryError(.signatureInvalid) {
                try CMS.verify(
                    signature: Array(good.prefix(good.count / 2)), content: Self.content, keyring: keyring, at: now(),
                    name: "sig")
            }
            expectFerryError(.limitExceeded) {
                try CMS.verify(
                    signature: [UInt8](repeating: 0x30, count: 1 << 20), content: Self.content, keyring: keyring,
                    at: now(), name: "sig")
            }
            // One signature file with two signers.
            try makeFile("\(dir)/m", bytes: Self.content)
            try Shell.check([
                "openssl", "cms", "-sign", "-binary", "-in", "\(dir)/m", "-signer", pki.certificate("signer1"),
                "-inkey",
                pki.key("signer1"), "-signer", pki.certificate("signer2"), "-inkey", pki.key("signer2"), "-outform",
                "DER",
                "-out", "\(dir)/two.p7s",
            ])
            expectFerryError(.signatureInvalid) {
                try CMS.verify(
                    signature: readFile("\(dir)/two.p7s"), content: Self.content, keyring: keyring, at: now(),
                    name: "sig")
            }
            // A key that does not belong to the certificate.
            expectFerryError(.signatureInvalid) {
                try CMS.sign(
                    content: Self.content, certificatePath: pki.certificate("signer1"), keyPath: pki.key("signer2"))
            }
            // A keyring file without certificates.
            try makeFile("\(dir)/empty.pem", bytes: Array("not a certificate\n".utf8))
            expectFerryError(.untrusted) { try Keyring(pemFile: "\(dir)/empty.pem") }
        }
    }
}
