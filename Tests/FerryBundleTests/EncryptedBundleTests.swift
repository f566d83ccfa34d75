import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Encrypted bundles on the host and through `ferry bundle verify`: the envelope interoperates
/// with `openssl cms` both ways, a bundle is re-addressed without being signed again, and every
/// bad input is one error line with its documented exit status (docs/encryption.md).
@Suite(.serialized) struct EncryptedBundleTests {
    struct Fixture {
        let dir: String
        let pki: TestPKI
        let image: String

        init(_ dir: String) throws {
            self.dir = dir
            pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            // Recipients: an RSA device, an EC device, a stranger.
            for name in ["rsa-device", "other-rsa"] {
                try Shell.check([
                    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(dir)/\(name).key",
                    "-out", "\(dir)/\(name).pem", "-subj", "/CN=\(name)", "-days", "30",
                ])
            }
            try Shell.check([
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "\(dir)/ec-device.key", "-out", "\(dir)/ec-device.pem", "-subj", "/CN=ec-device", "-days",
                "30",
            ])
            image = "\(dir)/rootfs.img"
            // Four 1 MiB chunks: data, zeros, data, a short data chunk.
            try makeFile(
                image,
                bytes: seededBytes(count: 1 << 20, seed: 3) + [UInt8](repeating: 0, count: 1 << 20)
                    + seededBytes(count: (1 << 20) + 4096, seed: 4))
        }

        func pem(_ name: String) -> String { "\(dir)/\(name).pem" }
        func key(_ name: String) -> String { "\(dir)/\(name).key" }

        @discardableResult
        func bundle(
            _ path: String, recipients: [String] = ["rsa-device", "ec-device"], compress: Bool = true,
            rsaPadding: Envelope.RSAPadding = .oaep
        ) throws -> Manifest {
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!,
                images: [BundleWriter.Image(slotClass: "rootfs", path: image)],
                signers: [BundleWriter.Signer(certificate: pki.certificate("signer1"), key: pki.key("signer1"))])
            options.chunkSize = 1 << 20
            options.compress = compress
            options.recipients = recipients.map(pem)
            options.rsaPadding = rsaPadding
            return try BundleWriter.create(options, output: path, logger: quietLogger)
        }

        /// `ferry bundle verify` on the host, opening with `key` (and its certificate) when given.
        func verify(_ bundle: String, key name: String?, certificate: Bool = true) throws -> Shell.Result {
            var arguments = [TestEnvironment.ferryBinary, "bundle", "verify", bundle, "--keyring", pki.keyring]
            if let name {
                arguments += ["--device-key", key(name)] + (certificate ? ["--device-cert", pem(name)] : [])
            }
            return try Shell.run(arguments)
        }

        func expectRefused(
            _ bundle: String, key: String?, certificate: Bool = true, _ code: FerryError.Code, _ what: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let result = try verify(bundle, key: key, certificate: certificate)
            #expect(result.status == code.exitStatus, "\(what): \(result.output)", sourceLocation: sourceLocation)
            #expect(
                result.output.hasPrefix("ferry: error: ") && result.output.filter { $0 == "\n" }.count == 1,
                "\(what): \(result.output)", sourceLocation: sourceLocation)
        }

        func members(_ bundle: String) throws -> [(String, [UInt8])] {
            let reader = TarReader(source: try FileByteSource(path: bundle))
            var result: [(String, [UInt8])] = []
            while let member = try reader.nextMember() {
                result.append((member.name, try reader.readRemainingContent(maximumCount: 64 << 20)))
            }
            return result
        }

        func write(_ members: [(String, [UInt8])], to path: String) throws {
            let sink = try FileByteSink(path: path)
            let tar = TarWriter(sink: sink)
            for (name, bytes) in members { try tar.addMember(name: name, bytes: bytes) }
            try tar.finish()
            try sink.finish()
        }

        /// The bundle with member `name` replaced (or removed, for nil).
        func replacing(_ bundle: String, _ name: String, with bytes: [UInt8]?, to path: String) throws {
            try write(
                try members(bundle).compactMap { member in
                    member.0 == name ? bytes.map { (name, $0) } : member
                }, to: path)
        }

        /// `openssl cms -decrypt` of the bundle's envelope with a recipient's key.
        func opensslContentKey(_ bundle: String, recipient: String) throws -> [UInt8] {
            let envelope = try #require(try members(bundle).first { $0.0 == "content-key.p7m" }?.1)
            try makeFile("\(dir)/envelope.p7m", bytes: envelope)
            try Shell.check([
                "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", "\(dir)/envelope.p7m", "-inkey",
                key(recipient), "-recip", pem(recipient), "-out", "\(dir)/content.key",
            ])
            return try readFile("\(dir)/content.key")
        }
    }

    @Test func anEncryptedBundleOpensForEachRecipientAndInOpenSSL() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let manifest = try fixture.bundle("\(dir)/e.ferry")
            let encryption = try #require(manifest.encryption)
            #expect(manifest.payloads[0].member == "rootfs.img.xz.enc")
            // The payload is not readable as it was: no xz stream, none of the image's bytes.
            let payload = try #require(try fixture.members("\(dir)/e.ferry").first { $0.0 == "rootfs.img.xz.enc" }?.1)
            #expect(payload.prefix(6) != [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00])
            try makeFile("\(dir)/payload.xz", bytes: payload)
            #expect(try Shell.run(["xz", "-t", "\(dir)/payload.xz"]).status != 0)

            // Without a key: what the signature covers; with each recipient's key: everything.
            let plain = try fixture.verify("\(dir)/e.ferry", key: nil)
            #expect(plain.status == 0 && plain.output.contains("content not checked"), "\(plain.output)")
            for recipient in ["rsa-device", "ec-device"] {
                for certificate in [true, false] {
                    let result = try fixture.verify("\(dir)/e.ferry", key: recipient, certificate: certificate)
                    #expect(
                        result.status == 0 && result.output.contains("(decrypted)"), "\(recipient): \(result.output)")
                }
                // openssl opens Ferry's envelope to the key the manifest names.
                let key = try fixture.opensslContentKey("\(dir)/e.ferry", recipient: recipient)
                #expect(try ChunkCipher(key: key).keyCheck == encryption.keyCheck, "\(recipient)")
            }
            let info = try Shell.check([TestEnvironment.ferryBinary, "bundle", "info", "\(dir)/e.ferry"])
            #expect(info.contains("2 recipient(s)") && info.contains("rsa: issuer /CN=rsa-device"), "\(info)")
            #expect(info.contains("ec: issuer /CN=ec-device"), "\(info)")
        }
    }

    @Test func anEnvelopeMadeByOpenSSLOpensInFerry() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.bundle("\(dir)/e.ferry", recipients: ["rsa-device"])
            let key = try fixture.opensslContentKey("\(dir)/e.ferry", recipient: "rsa-device")
            try makeFile("\(dir)/key.bin", bytes: key)
            // openssl's defaults (PKCS #1 v1.5 for RSA), RSA-OAEP, and EC key agreement.
            for (recipient, options) in [
                ("other-rsa", [String]()), ("other-rsa", ["-keyopt", "rsa_padding_mode:oaep"]), ("ec-device", []),
            ] {
                try Shell.check(
                    [
                        "openssl", "cms", "-encrypt", "-binary", "-aes256", "-in", "\(dir)/key.bin", "-outform", "DER",
                        "-out", "\(dir)/openssl.p7m", "-recip", fixture.pem(recipient),
                    ] + options)
                try fixture.replacing(
                    "\(dir)/e.ferry", "content-key.p7m", with: try readFile("\(dir)/openssl.p7m"),
                    to: "\(dir)/o.ferry")
                let result = try fixture.verify("\(dir)/o.ferry", key: recipient)
                #expect(result.status == 0 && result.output.contains("(decrypted)"), "\(options): \(result.output)")
                // The recipient the bundle was made for no longer opens it.
                try fixture.expectRefused("\(dir)/o.ferry", key: "rsa-device", .notAddressed, "the old recipient")
            }
        }
    }

    @Test func reAddressingKeepsTheSignedBundleByteForByte() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.bundle("\(dir)/e.ferry", recipients: ["rsa-device"])
            let result = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "encrypt", "\(dir)/e.ferry", "--device-key",
                fixture.key("rsa-device"), "--encrypt-to", fixture.pem("ec-device"), "--encrypt-to",
                fixture.pem("other-rsa"), "--rsa-padding", "pkcs1", "-o", "\(dir)/r.ferry",
            ])
            #expect(result.status == 0, "\(result.output)")
            let before = try fixture.members("\(dir)/e.ferry")
            let after = try fixture.members("\(dir)/r.ferry")
            #expect(before.map(\.0) == after.map(\.0))
            for ((name, old), (_, new)) in zip(before, after) where name != "content-key.p7m" {
                #expect(old == new, "\(name) changed")
            }
            for recipient in ["ec-device", "other-rsa"] {
                #expect(try fixture.verify("\(dir)/r.ferry", key: recipient).status == 0, "\(recipient)")
            }
            try fixture.expectRefused("\(dir)/r.ferry", key: "rsa-device", .notAddressed, "a recipient left out")
            // A key that does not open the bundle, and a plain bundle, cannot be re-addressed.
            let wrong = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "encrypt", "\(dir)/e.ferry", "--device-key",
                fixture.key("other-rsa"), "--device-cert", fixture.pem("other-rsa"), "--encrypt-to",
                fixture.pem("ec-device"), "-o", "\(dir)/w.ferry",
            ])
            #expect(wrong.status == FerryError.Code.notAddressed.exitStatus, "\(wrong.output)")
            try fixture.bundle("\(dir)/p.ferry", recipients: [])
            let plain = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "encrypt", "\(dir)/p.ferry", "--device-key",
                fixture.key("rsa-device"), "--encrypt-to", fixture.pem("ec-device"), "-o", "\(dir)/w.ferry",
            ])
            #expect(plain.status == FerryError.Code.usage.exitStatus, "\(plain.output)")
            #expect(!TextFile.exists("\(dir)/w.ferry"))
        }
    }

    @Test func everyBadEncryptedInputIsOneLineWithItsCode() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.bundle("\(dir)/e.ferry", recipients: ["rsa-device"], compress: false)
            let members = try fixture.members("\(dir)/e.ferry")
            let envelope = try #require(members.first { $0.0 == "content-key.p7m" }?.1)
            let payload = try #require(members.first { $0.0 == "rootfs.img.enc" }?.1)

            // Not addressed to this device: with its certificate, and without.
            try fixture.expectRefused("\(dir)/e.ferry", key: "other-rsa", .notAddressed, "another device")
            try fixture.expectRefused(
                "\(dir)/e.ferry", key: "other-rsa", certificate: false, .notAddressed, "another device, no certificate")
            // A device key that is not its certificate's.
            let mismatched = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "verify", "\(dir)/e.ferry", "--keyring", fixture.pki.keyring,
                "--device-key", fixture.key("other-rsa"), "--device-cert", fixture.pem("rsa-device"),
            ])
            #expect(mismatched.status == FerryError.Code.deviceKeyInvalid.exitStatus, "\(mismatched.output)")
            let missing = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "verify", "\(dir)/e.ferry", "--keyring", fixture.pki.keyring,
                "--device-key", "\(dir)/no-such.key",
            ])
            #expect(missing.status == FerryError.Code.deviceKeyInvalid.exitStatus, "\(missing.output)")

            // A corrupt envelope: garbage, cut short, a byte flipped in the device's entry, and a
            // well-formed envelope of another key.
            var flipped = envelope
            flipped[flipped.count / 2] ^= 0x01
            try makeFile("\(dir)/random.bin", bytes: seededBytes(count: 32, seed: 9))
            try Shell.check([
                "openssl", "cms", "-encrypt", "-binary", "-aes256", "-in", "\(dir)/random.bin", "-outform", "DER",
                "-out", "\(dir)/other-key.p7m", "-recip", fixture.pem("rsa-device"),
            ])
            for (what, bytes) in [
                ("garbage", seededBytes(count: 500, seed: 1)),
                ("cut short", Array(envelope.prefix(envelope.count / 2))),
                ("a byte flipped", flipped), ("another key", try readFile("\(dir)/other-key.p7m")),
            ] {
                try fixture.replacing("\(dir)/e.ferry", "content-key.p7m", with: bytes, to: "\(dir)/bad.ferry")
                try fixture.expectRefused("\(dir)/bad.ferry", key: "rsa-device", .bundleInvalid, "envelope: \(what)")
            }

            // A ciphertext byte flipped in the first, a middle and the last chunk.
            let chunk = (1 << 20) + ChunkCipher.tagSize
            for (what, offset) in [("first", 10), ("middle", chunk + chunk / 2), ("last", payload.count - 1)] {
                var bad = payload
                bad[offset] ^= 0x40
                try fixture.replacing("\(dir)/e.ferry", "rootfs.img.enc", with: bad, to: "\(dir)/bad.ferry")
                try fixture.expectRefused("\(dir)/bad.ferry", key: "rsa-device", .bundleInvalid, "\(what) chunk")
                try fixture.expectRefused("\(dir)/bad.ferry", key: nil, .bundleInvalid, "\(what) chunk, no key")
            }
            // Two chunks swapped (same size: no compression).
            let swapped = Array(payload[chunk..<(2 * chunk)] + payload[..<chunk] + payload[(2 * chunk)...])
            try fixture.replacing("\(dir)/e.ferry", "rootfs.img.enc", with: swapped, to: "\(dir)/bad.ferry")
            try fixture.expectRefused("\(dir)/bad.ferry", key: "rsa-device", .bundleInvalid, "chunks swapped")

            // A manifest that says encrypted, without its envelope; a plain bundle carrying one.
            try fixture.replacing("\(dir)/e.ferry", "content-key.p7m", with: nil, to: "\(dir)/bad.ferry")
            try fixture.expectRefused("\(dir)/bad.ferry", key: "rsa-device", .bundleInvalid, "no envelope")
            try fixture.bundle("\(dir)/p.ferry", recipients: [])
            var plain = try fixture.members("\(dir)/p.ferry")
            plain.insert(("content-key.p7m", envelope), at: 2)
            try fixture.write(plain, to: "\(dir)/bad.ferry")
            try fixture.expectRefused(
                "\(dir)/bad.ferry", key: "rsa-device", .bundleInvalid, "an envelope in a plain bundle")
        }
    }

    @Test func aChunkOpensOnlyWithItsKeyAndInItsPlace() throws {
        let cipher = try ChunkCipher.random()
        let plain = seededBytes(count: 70_000, seed: 5)
        let sealed = try cipher.seal(plain, payload: 2, chunk: 7)
        #expect(sealed.count == plain.count + ChunkCipher.tagSize)
        func open(_ bytes: [UInt8], with cipher: ChunkCipher, payload: Int, chunk: Int) -> [UInt8]? {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
            defer { buffer.deallocate() }
            buffer.copyBytes(from: bytes)
            guard let count = try? cipher.open(buffer, payload: payload, chunk: chunk) else { return nil }
            return Array(buffer[..<count])
        }
        #expect(open(sealed, with: cipher, payload: 2, chunk: 7) == plain)
        #expect(open(sealed, with: cipher, payload: 2, chunk: 8) == nil, "another chunk's place")
        #expect(open(sealed, with: cipher, payload: 1, chunk: 7) == nil, "another payload's place")
        #expect(open(sealed, with: try ChunkCipher.random(), payload: 2, chunk: 7) == nil, "another key")
        var flipped = sealed
        flipped[100] ^= 1
        #expect(open(flipped, with: cipher, payload: 2, chunk: 7) == nil, "a flipped byte")
        #expect(try ChunkCipher(key: cipher.keyBytes).keyCheck == cipher.keyCheck)
        #expect(try ChunkCipher.random().keyCheck != cipher.keyCheck)
    }
}
