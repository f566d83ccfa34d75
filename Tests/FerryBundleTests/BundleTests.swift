import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Logging
import Testing

/// Signed bundles end to end: thresholds, deny-list, rotation, time, and every bad input refused
/// by the device-side `ferry bundle verify` with its documented exit status.
@Suite(.serialized) struct BundleTests {
    /// A sandbox whose keyring is a test PKI (3 signers), with the given threshold.
    struct Fixture {
        let sandbox: Sandbox
        let pki: TestPKI
        let image: String
        var config: [String] { ["--config", sandbox.configurationPath] }

        init(in dir: String, threshold: Int = 1) throws {
            sandbox = try Sandbox.make(in: "\(dir)/device")
            pki = try TestPKI.make(in: "\(dir)/pki")
            let text = try TextFile.read(sandbox.configurationPath)
                .replacing("\"keyring\": \"pki/keyring.pem\"", with: "\"keyring\": \"\(pki.keyring)\"")
                .replacing("\"signatureThreshold\": 1", with: "\"signatureThreshold\": \(threshold)")
            try DurableFile.write(text, to: sandbox.configurationPath)
            image = "\(dir)/new-rootfs.img"
            try makeFile(image, bytes: seededBytes(count: 3 << 20, seed: 11) + [UInt8](repeating: 0, count: 1 << 20))
        }

        func signer(_ name: String) -> BundleWriter.Signer {
            BundleWriter.Signer(certificate: pki.certificate(name), key: pki.key(name))
        }

        /// A bundle made by Ferry's writer.
        func bundle(
            _ path: String, version: String = "1.1.0", signers: [String] = ["signer1"],
            compatible: String = "ferry-demo-x86_64",
            securityVersion: Int64 = 0, expires: Int64? = nil, newKeyring: String? = nil, denyList: [String] = []
        ) throws -> Manifest {
            var options = BundleWriter.Options(
                compatible: compatible, version: SemanticVersion(version)!,
                images: [BundleWriter.Image(slotClass: "rootfs", path: image)], signers: signers.map(signer))
            options.chunkSize = 1 << 20
            options.securityVersion = securityVersion
            options.expires = expires
            options.newKeyring = newKeyring
            options.denyList = denyList
            return try BundleWriter.create(options, output: path, logger: quietLogger)
        }

        func verify(_ bundle: String, _ extra: [String] = []) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary, "bundle", "verify", bundle] + config + extra)
        }

        func expectRefused(
            _ bundle: String, status: Int32, _ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let result = try verify(bundle, extra)
            #expect(result.status == status, "\(result.output)", sourceLocation: sourceLocation)
            #expect(result.output.hasPrefix("ferry: error: "), "\(result.output)", sourceLocation: sourceLocation)
            #expect(result.output.filter { $0 == "\n" }.count == 1, "\(result.output)", sourceLocation: sourceLocation)
        }

        /// Members of a bundle, to rebuild it with changes.
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

        func sign(_ manifest: [UInt8], _ name: String) throws -> [UInt8] {
            try CMS.sign(content: manifest, certificatePath: pki.certificate(name), keyPath: pki.key(name))
        }
    }

    /// A bundle read whole through its index entry, as an install reads it (manifest, payloads
    /// chunk by chunk, the archive's end): the file's SHA-256 is checked at its end, and a
    /// manifest other than the entry's is refused as soon as it is read.
    @Test func aBundleReadThroughItsIndexEntryIsCheckedToTheByte() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            let path = "\(dir)/b.ferry"
            _ = try fixture.bundle(path)
            let bytes = try readFile(path)
            let manifestReader = BundleReader(source: try FileByteSource(path: path))
            try manifestReader.readSignedManifest()
            let manifest = try Manifest.parse(manifestReader.manifestBytes)
            let entry = UpdateIndex.entry(
                for: manifest, manifestBytes: manifestReader.manifestBytes, url: "b.ferry", size: Int64(bytes.count),
                sha256: SHA256Hasher.hash(bytes))
            let policy = TrustPolicy(
                keyring: try Keyring(pemFile: fixture.pki.keyring), threshold: 1, denyList: [],
                trustedTime: WallClock.now(), device: nil)

            func readWhole(_ entry: UpdateIndex.Entry) throws(FerryError) {
                let reader = BundleReader(source: IndexedBundleSource(try FileByteSource(path: path), entry: entry))
                let (manifest, _, _) = try reader.verify(policy: policy, indexed: entry)
                for payload in manifest.payloads {
                    try reader.readPayload(payload, checkWholeHash: false) { (_, _, _) throws(FerryError) in }
                }
                try reader.finish()
            }
            try readWhole(entry)
            var otherFile = entry
            otherFile.sha256 = SHA256Hasher.hash(Array("another file".utf8))
            expectFerryError(.notIndexed) { try readWhole(otherFile) }
            var otherManifest = entry
            otherManifest.manifestSHA256 = SHA256Hasher.hash(Array("another manifest".utf8))
            expectFerryError(.notIndexed) { try readWhole(otherManifest) }
            var smaller = entry
            smaller.size -= 1
            expectFerryError(.notIndexed) { try readWhole(smaller) }
            var larger = entry
            larger.size += 512
            expectFerryError(.truncated) { try readWhole(larger) }
        }
    }

    @Test func thresholdsOneOfOneTwoOfTwoTwoOfThree() async throws {
        try await withTemporaryDirectory { dir in
            let one = try Fixture(in: "\(dir)/one", threshold: 1)
            _ = try one.bundle("\(dir)/a.ferry")
            #expect(try one.verify("\(dir)/a.ferry").status == 0)

            let two = try Fixture(in: "\(dir)/two", threshold: 2)
            _ = try two.bundle("\(dir)/b1.ferry", signers: ["signer1"])
            try two.expectRefused("\(dir)/b1.ferry", status: 43)
            _ = try two.bundle("\(dir)/b2.ferry", signers: ["signer1", "signer2"])
            #expect(try two.verify("\(dir)/b2.ferry").status == 0)
            // Two of three signers, and all three.
            _ = try two.bundle("\(dir)/b3.ferry", signers: ["signer2", "signer3"])
            #expect(try two.verify("\(dir)/b3.ferry").status == 0)
            _ = try two.bundle("\(dir)/b4.ferry", signers: ["signer1", "signer2", "signer3"])
            #expect(try two.verify("\(dir)/b4.ferry").status == 0)
            // The same signer twice counts once.
            _ = try two.bundle("\(dir)/b5.ferry", signers: ["signer1", "signer1"])
            try two.expectRefused("\(dir)/b5.ferry", status: 43)
            // An untrusted signer does not count towards the threshold.
            _ = try two.bundle("\(dir)/b6.ferry", signers: ["signer1", "stranger"])
            try two.expectRefused("\(dir)/b6.ferry", status: 43)
        }
    }

    @Test func denyListAndRotation() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            let fingerprint = try Certificate.load(pemFile: fixture.pki.certificate("signer1"))[0].fingerprint.hex
            // Deny-listed in the configuration.
            let original = try TextFile.read(fixture.sandbox.configurationPath)
            try DurableFile.write(
                original.replacing(
                    "\"signatureThreshold\": 1", with: "\"signatureThreshold\": 1, \"denyList\": [\"\(fingerprint)\"]"),
                to: fixture.sandbox.configurationPath)
            _ = try fixture.bundle("\(dir)/denied.ferry", signers: ["signer1"])
            try fixture.expectRefused("\(dir)/denied.ferry", status: 43)
            try DurableFile.write(original, to: fixture.sandbox.configurationPath)

            // Rotation: a bundle signed under the current keyring carries a new one (another CA),
            // denying signer1. The device adopts it; from then on only the new CA's signers count.
            let next = try TestPKI.make(in: "\(dir)/next", signers: ["newsigner"])
            _ = try fixture.bundle(
                "\(dir)/rotate.ferry", signers: ["signer1"], newKeyring: next.keyring, denyList: [fingerprint])
            #expect(try fixture.verify("\(dir)/rotate.ferry").status == 0)
            let configuration = try fixture.sandbox.configuration()
            let policy = try DeviceTrust.policy(
                configuration: configuration,
                booted: BootedGroup(bootname: "A", source: "test"), allowDowngrade: false)
            let reader = BundleReader(source: try FileByteSource(path: "\(dir)/rotate.ferry"))
            let (manifest, _, keyring) = try reader.verify(policy: policy)
            let store = StateStore(directory: configuration.stateDirectory)
            try store.adoptKeyring(try #require(keyring), denyList: manifest.keyring!.denyList, from: "rotate.ferry")
            #expect(try DeviceTrust.keyringPath(configuration) == store.keyringPath)

            _ = try fixture.bundle("\(dir)/old.ferry", signers: ["signer2"])
            try fixture.expectRefused("\(dir)/old.ferry", status: 43)
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.2.0")!,
                images: [BundleWriter.Image(slotClass: "rootfs", path: fixture.image)],
                signers: [BundleWriter.Signer(certificate: next.certificate("newsigner"), key: next.key("newsigner"))])
            options.chunkSize = 1 << 20
            try BundleWriter.create(options, output: "\(dir)/new.ferry", logger: quietLogger)
            #expect(try fixture.verify("\(dir)/new.ferry").status == 0)
        }
    }

    @Test func trustedTimeExpiredCertificateExpiredBundleAndAClockIn1970() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            let configuration = try fixture.sandbox.configuration()
            let store = StateStore(directory: configuration.stateDirectory)
            let booted = BootedGroup(bootname: "A", source: "test")
            _ = try fixture.bundle("\(dir)/b.ferry")
            func check(clock: Int64) throws {
                let policy = try DeviceTrust.policy(
                    configuration: configuration, booted: booted, allowDowngrade: false, clock: clock)
                let reader = BundleReader(source: try FileByteSource(path: "\(dir)/b.ferry"))
                _ = try reader.verify(policy: policy)
            }
            // A device without an RTC boots in 1970: the binary's build time is the floor, and so
            // is the last time the device recorded (here: now, as after an earlier update).
            #expect(WallClock.buildTime > 1_700_000_000)
            #expect(try DeviceTrust.trustedTime(store: store, clock: 0) == WallClock.buildTime)
            try store.recordTrustedTime(WallClock.now())
            #expect(try DeviceTrust.trustedTime(store: store, clock: 0) >= WallClock.now() - 5)
            try check(clock: 0)
            // A signer certificate that expired (as judged at the trusted time).
            let signer = try Certificate.load(pemFile: fixture.pki.certificate("signer1"))[0]
            expectFerryError(.expired) { try check(clock: signer.notAfter + 86_400) }
            // Time never goes backwards: once a later time was recorded, a clock reset does not help.
            try store.recordTrustedTime(signer.notAfter + 86_400)
            expectFerryError(.expired) { try check(clock: 0) }
            try Shell.check(["rm", store.trustPath])
            // An expired bundle, through the CLI.
            _ = try fixture.bundle("\(dir)/old.ferry", expires: WallClock.now() - 3600)
            try fixture.expectRefused("\(dir)/old.ferry", status: 46)
        }
    }

    @Test func deviceRefusalsOfManifestContent() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            _ = try fixture.bundle("\(dir)/other.ferry", compatible: "another-board")
            try fixture.expectRefused("\(dir)/other.ferry", status: 44)
            // The booted group holds 1.0.0: an older version is a downgrade unless allowed.
            _ = try fixture.bundle("\(dir)/older.ferry", version: "0.9.0")
            try fixture.expectRefused("\(dir)/older.ferry", status: 45)
            #expect(try fixture.verify("\(dir)/older.ferry", ["--allow-downgrade"]).status == 0)
            // Below the security floor: refused even with --allow-downgrade.
            let store = StateStore(directory: try fixture.sandbox.configuration().stateDirectory)
            try store.raiseSecurityFloor(to: 5)
            _ = try fixture.bundle("\(dir)/insecure.ferry", version: "2.0.0", securityVersion: 4)
            try fixture.expectRefused("\(dir)/insecure.ferry", status: 45, ["--allow-downgrade"])
            _ = try fixture.bundle("\(dir)/secure.ferry", version: "2.0.0", securityVersion: 5)
            #expect(try fixture.verify("\(dir)/secure.ferry").status == 0)
        }
    }

    @Test func structuralRefusals() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            let good = "\(dir)/good.ferry"
            _ = try fixture.bundle(good, signers: ["signer1"])
            #expect(try fixture.verify(good).status == 0)
            let members = try fixture.members(good)
            let manifest = members[0].1
            let payload = members[2]
            func variant(_ name: String, _ list: [(String, [UInt8])], status: Int32) throws {
                let path = "\(dir)/\(name).ferry"
                try fixture.write(list, to: path)
                try fixture.expectRefused(path, status: status)
            }
            // Unsigned.
            try variant("unsigned", [members[0], payload], status: 42)
            // Signed by a certificate the keyring does not trust.
            try variant(
                "untrusted", [members[0], ("manifest.json.1.p7s", try fixture.sign(manifest, "stranger")), payload],
                status: 43)
            // Tampered manifest (signature over the original).
            var tampered = manifest
            tampered[tampered.count / 2] ^= 0x01
            try variant("tampered", [("manifest.json", tampered), members[1], payload], status: 42)
            // Signature members duplicated, out of order, missing in the sequence.
            try variant("duplicated", [members[0], members[1], members[1], payload], status: 41)
            try variant("misnumbered", [members[0], ("manifest.json.2.p7s", members[1].1), payload], status: 41)
            try variant("gap", [members[0], members[1], ("manifest.json.3.p7s", members[1].1), payload], status: 41)
            // Manifest not first.
            try variant("notfirst", [members[1], members[0], payload], status: 41)
            // Payload missing, renamed, out of order, or followed by an extra member.
            try variant("nopayload", [members[0], members[1]], status: 40)
            try variant("renamed", [members[0], members[1], ("other.img.xz", payload.1)], status: 41)
            try variant("extra", [members[0], members[1], payload, ("extra", [1, 2, 3])], status: 41)
            // Oversized manifest and signature.
            try variant(
                "bigmanifest",
                [("manifest.json", [UInt8](repeating: 0x20, count: (1 << 20) + 1)), members[1], payload], status: 47)
            try variant(
                "bigsignature",
                [members[0], ("manifest.json.1.p7s", [UInt8](repeating: 0x30, count: (64 << 10) + 1)), payload],
                status: 47)
            // A payload byte flipped: caught by the chunk hash.
            var corrupt = payload.1
            corrupt[corrupt.count / 2] ^= 0x40
            try variant("corrupt", [members[0], members[1], (payload.0, corrupt)], status: 41)
            // Truncated at every member boundary and inside the payload.
            let bytes = try readFile(good)
            for cut in [
                512, 1024, 512 + ((manifest.count + 511) / 512) * 512, bytes.count / 2, bytes.count - 1024 - 17,
            ] {
                try makeFile("\(dir)/cut.ferry", bytes: Array(bytes.prefix(cut)))
                try fixture.expectRefused("\(dir)/cut.ferry", status: 40)
            }
        }
    }

    @Test func oddMemberNamesAndLinks() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            _ = try fixture.bundle("\(dir)/good.ferry")
            let members = try fixture.members("\(dir)/good.ferry")
            // GNU tar builds archives with odd names and a symbolic link; each is refused.
            try DurableFile.createDirectory("\(dir)/t")
            for (name, bytes) in members { try makeFile("\(dir)/t/\(name)", bytes: bytes) }
            try Shell.check(["ln", "-s", "/etc/passwd", "\(dir)/t/link"])
            let cases: [(String, [String])] = [
                ("dotdot", ["--transform", "s|^rootfs.img.xz$|../rootfs.img.xz|"]),
                ("absolute", ["--transform", "s|^rootfs.img.xz$|/rootfs.img.xz|", "-P"]),
            ]
            for (name, options) in cases {
                try Shell.check(
                    ["tar", "--format=ustar", "-C", "\(dir)/t", "-cf", "\(dir)/\(name).ferry"] + options
                        + ["manifest.json", "manifest.json.1.p7s", "rootfs.img.xz"])
                try fixture.expectRefused("\(dir)/\(name).ferry", status: 41)
            }
            try Shell.check([
                "tar", "--format=ustar", "-C", "\(dir)/t", "-cf", "\(dir)/link.ferry", "manifest.json",
                "manifest.json.1.p7s", "link",
            ])
            try fixture.expectRefused("\(dir)/link.ferry", status: 41)
        }
    }

    @Test func absurdManifestSizesAndCounts() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            _ = try fixture.bundle("\(dir)/good.ferry")
            let members = try fixture.members("\(dir)/good.ferry")
            guard case .object(var root) = try JSONValue.parse(members[0].1, what: "m", code: .internal),
                case .array(var payloads)? = root["payloads"], case .object(var payload) = payloads[0]
            else {
                Issue.record("unexpected manifest")
                return
            }
            func resigned(_ object: [String: JSONValue], _ name: String, status: Int32) throws {
                let manifest = JSONValue.object(object).serialized()
                try fixture.write(
                    [
                        ("manifest.json", manifest), ("manifest.json.1.p7s", try fixture.sign(manifest, "signer1")),
                        members[2],
                    ],
                    to: "\(dir)/\(name).ferry")
                try fixture.expectRefused("\(dir)/\(name).ferry", status: status)
            }
            var changed = root
            var item = payload
            item["size"] = .number(Double(1 << 52))
            payloads[0] = .object(item)
            changed["payloads"] = .array(payloads)
            try resigned(changed, "hugesize", status: 41)
            item = payload
            item["chunkSize"] = .number(1)
            payloads[0] = .object(item)
            changed["payloads"] = .array(payloads)
            try resigned(changed, "tinychunks", status: 41)
            changed = root
            changed["payloads"] = .array([JSONValue](repeating: .object(payload), count: 65))
            try resigned(changed, "manypayloads", status: 47)
            payload["chunks"] = .array([])
            changed["payloads"] = .array([.object(payload)])
            try resigned(changed, "nochunks", status: 41)
            root["unknown"] = .bool(true)
            try resigned(root, "unknownkey", status: 41)
        }
    }

    @Test func opensslSignedBundlesAndXZImagesAreAccepted() async throws {
        try await withTemporaryDirectory { dir in
            let fixture = try Fixture(in: dir)
            // An image given as .xz is decoded and re-chunked; the payload is the decoded image.
            try Shell.check(["sh", "-c", "xz -T2 -k -c \(fixture.image) > \(dir)/image.xz"])
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!,
                images: [BundleWriter.Image(slotClass: "rootfs", path: "\(dir)/image.xz")],
                signers: [fixture.signer("signer1")])
            options.chunkSize = 1 << 20
            let manifest = try BundleWriter.create(options, output: "\(dir)/b.ferry", logger: quietLogger)
            #expect(manifest.payloads[0].size == 4 << 20)
            #expect(manifest.payloads[0].sha256 == SHA256Hasher.hash(try readFile(fixture.image)))
            // Re-signed with the openssl command line, as docs/bundle-format.md documents.
            let members = try fixture.members("\(dir)/b.ferry")
            try makeFile("\(dir)/manifest.json", bytes: members[0].1)
            try Shell.check([
                "openssl", "cms", "-sign", "-binary", "-in", "\(dir)/manifest.json", "-signer",
                fixture.pki.certificate("signer2"),
                "-inkey", fixture.pki.key("signer2"), "-outform", "DER", "-out", "\(dir)/sig.p7s",
            ])
            try fixture.write(
                [members[0], ("manifest.json.1.p7s", try readFile("\(dir)/sig.p7s")), members[2]],
                to: "\(dir)/openssl.ferry")
            let result = try fixture.verify("\(dir)/openssl.ferry")
            #expect(result.status == 0, "\(result.output)")
            #expect(result.output.contains("CN=signer2"))
            // And `tar tvf` lists a bundle in the documented order.
            let listing = try Shell.check(["tar", "tf", "\(dir)/b.ferry"])
            #expect(listing == "manifest.json\nmanifest.json.1.p7s\nrootfs.img.xz\n")
        }
    }
}
