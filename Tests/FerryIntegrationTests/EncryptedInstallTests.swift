import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Encrypted bundles through `ferry install` on sandbox devices (docs/encryption.md): every kind
/// of device key, every payload kind, resumed after kills, every refusal before writing changing
/// nothing, a corrupt chunk stopping before it is written, and no plaintext outside the target.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct EncryptedInstallTests {
    static func ferry(_ sandbox: Sandbox, _ arguments: [String], environment: [String: String] = [:]) throws
        -> Shell.Result
    {
        try Shell.run(
            [TestEnvironment.ferryBinary] + arguments + ["--config", sandbox.configurationPath],
            environment: environment)
    }

    static func slot(_ sandbox: Sandbox, _ label: String, _ count: Int) throws -> [UInt8] {
        let partition = try PartitionTable.read(sandbox.diskPath).partition(
            .partitionLabel(label), disk: sandbox.diskPath)
        return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(at: 0, count: count)
    }

    static func expectInstalled(
        _ sandbox: Sandbox, _ result: Shell.Result, _ images: [(String, [UInt8])],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(result.status == 0, "\(result.output)", sourceLocation: sourceLocation)
        for (name, bytes) in images {
            #expect(try slot(sandbox, "\(name)_b", bytes.count) == bytes, "\(name)_b", sourceLocation: sourceLocation)
        }
        #expect(
            try ferry(sandbox, ["env", "list"]).output.contains("BOOT_ORDER=B A"), sourceLocation: sourceLocation)
        #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty, sourceLocation: sourceLocation)
    }

    /// RSA with RSA-OAEP and the certificate configured; EC given as a bare key path; RSA with
    /// PKCS #1 v1.5 (what a TPM's provider needs).
    @Test(arguments: ["rsa-oaep", "ec-path", "rsa-pkcs1"])
    func anEncryptedBundleInstallsAndBoots(key kind: String) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeDeviceKey("device", ec: kind == "ec-path")
            try sandbox.editConfiguration { object in
                object["deviceKey"] =
                    kind == "ec-path"
                    ? .string("device.key")
                    : .object(["key": .string("device.key"), "certificate": .string("device.pem")])
            }
            let images = try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/e.ferry", seed: 12,
                zeroChunks: ["rootfs": [1, 2, 4]], encryptTo: ["\(dir)/device.pem"],
                rsaPadding: kind == "rsa-pkcs1" ? .pkcs1 : .oaep)
            try Self.expectInstalled(sandbox, try Self.ferry(sandbox, ["install", "\(dir)/e.ferry"]), images)
            let boot = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(boot.output.contains("booted group B"), "\(boot.output)")
        }
    }

    /// ARCHITECTURE.md invariant 11 for every refusal encryption adds: nothing changes at all.
    @Test func everyEncryptionRefusalBeforeWritingChangesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            for name in ["device", "other"] { try sandbox.makeDeviceKey(name) }
            let sizes = [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)]
            try sandbox.makeUpdate(sizes, output: "\(dir)/e.ferry", seed: 3, encryptTo: ["\(dir)/device.pem"])
            try sandbox.makeUpdate(sizes, output: "\(dir)/other.ferry", seed: 3, encryptTo: ["\(dir)/other.pem"])
            try sandbox.makeUpdate(sizes, output: "\(dir)/plain.ferry", seed: 3)
            // The envelope made garbage, and removed.
            var members: [(String, [UInt8])] = []
            let reader = TarReader(source: try FileByteSource(path: "\(dir)/e.ferry"))
            while let member = try reader.nextMember() {
                members.append((member.name, try reader.readRemainingContent(maximumCount: 64 << 20)))
            }
            func write(_ members: [(String, [UInt8])], _ path: String) throws {
                let sink = try FileByteSink(path: path)
                let tar = TarWriter(sink: sink)
                for (name, bytes) in members { try tar.addMember(name: name, bytes: bytes) }
                try tar.finish()
                try sink.finish()
            }
            try write(
                members.map { $0.0 == "content-key.p7m" ? ($0.0, seededBytes(count: 600, seed: 4)) : $0 },
                "\(dir)/corrupt.ferry")
            try write(members.filter { $0.0 != "content-key.p7m" }, "\(dir)/no-envelope.ferry")

            typealias Case = RefusalsChangeNothingTests.Case
            // No device key configured.
            try RefusalsChangeNothingTests.expectNothingChanged(
                sandbox, Case(what: "no deviceKey", arguments: ["install", "\(dir)/e.ferry"], code: .deviceKeyInvalid))
            // A device key file that does not exist; one that is not its certificate's.
            try sandbox.editConfiguration { $0["deviceKey"] = .string("missing.key") }
            try RefusalsChangeNothingTests.expectNothingChanged(
                sandbox,
                Case(what: "a missing key file", arguments: ["install", "\(dir)/e.ferry"], code: .deviceKeyInvalid))
            try sandbox.editConfiguration {
                $0["deviceKey"] = .object(["key": .string("other.key"), "certificate": .string("device.pem")])
            }
            try RefusalsChangeNothingTests.expectNothingChanged(
                sandbox,
                Case(
                    what: "a key not its certificate's", arguments: ["install", "\(dir)/e.ferry"],
                    code: .deviceKeyInvalid))
            // The right key from here on.
            try sandbox.editConfiguration {
                $0["deviceKey"] = .object(["key": .string("device.key"), "certificate": .string("device.pem")])
            }
            for refusal in [
                Case(
                    what: "another device's bundle", arguments: ["install", "\(dir)/other.ferry"], code: .notAddressed),
                Case(what: "a corrupt envelope", arguments: ["install", "\(dir)/corrupt.ferry"], code: .bundleInvalid),
                Case(
                    what: "encrypted without an envelope", arguments: ["install", "\(dir)/no-envelope.ferry"],
                    code: .bundleInvalid),
            ] {
                try RefusalsChangeNothingTests.expectNothingChanged(sandbox, refusal)
            }
            // A plain bundle where encryption is required.
            try sandbox.editConfiguration { $0["requireEncryption"] = .bool(true) }
            try RefusalsChangeNothingTests.expectNothingChanged(
                sandbox,
                Case(
                    what: "a plain bundle, encryption required", arguments: ["install", "\(dir)/plain.ferry"],
                    code: .notEncrypted))
            // And the good one still installs.
            #expect(try Self.ferry(sandbox, ["install", "\(dir)/e.ferry"]).status == 0)
        }
    }

    /// A ciphertext byte flipped in the first, a middle or the last chunk: refused before that
    /// chunk is written, nothing switched; the next install of the good bundle finishes.
    @Test(arguments: ["first", "middle", "last"]) func aFlippedCiphertextByteSwitchesNothing(chunk: String) async throws
    {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeDeviceKey("device")
            try sandbox.editConfiguration { $0["deviceKey"] = .string("device.key") }
            let images = try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/e.ferry", seed: 8,
                encryptTo: ["\(dir)/device.pem"])
            let reader = TarReader(source: try FileByteSource(path: "\(dir)/e.ferry"))
            var rootfs: TarMember? = nil
            while rootfs == nil, let member = try reader.nextMember() {
                if member.name == "rootfs.img\(TestEnvironment.payloadSuffix).enc" { rootfs = member }
            }
            let member = try #require(rootfs)
            let offset =
                chunk == "first"
                ? member.offset + 20
                : chunk == "middle" ? member.offset + member.size / 2 : member.offset + member.size - 3
            var bytes = try readFile("\(dir)/e.ferry")
            bytes[Int(offset)] ^= 0x10
            try makeFile("\(dir)/bad.ferry", bytes: bytes)
            let groupA = try ["rootfs_a", "modem_a", "tee_a"].map { try Self.slot(sandbox, $0, 1 << 20) }
            let result = try Self.ferry(sandbox, ["install", "\(dir)/bad.ferry"])
            #expect(result.status == FerryError.Code.bundleInvalid.exitStatus, "\(result.output)")
            #expect(result.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error: ") }.count == 1)
            #expect(try ["rootfs_a", "modem_a", "tee_a"].map { try Self.slot(sandbox, $0, 1 << 20) } == groupA)
            let environment = try Self.ferry(sandbox, ["env", "list"]).output
            #expect(environment.contains("BOOT_ORDER=A B") && environment.contains("BOOT_B_LEFT=0"), "\(environment)")
            try Self.expectInstalled(sandbox, try Self.ferry(sandbox, ["install", "\(dir)/e.ferry"]), images)
        }
    }

    /// Killed at points spread over the install, then run again: it resumes from its journal
    /// (mid-payload, at a chunk of the encrypted stream) and finishes.
    @Test func aKilledEncryptedInstallResumes() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeDeviceKey("device")
            try sandbox.editConfiguration { $0["deviceKey"] = .string("device.key") }
            let images = try sandbox.makeUpdate(
                [("rootfs", 12 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/e.ferry", preset: 0,
                seed: 21, encryptTo: ["\(dir)/device.pem"])
            let store = StateStore(directory: try sandbox.configuration().stateDirectory)
            let install = [
                TestEnvironment.ferryBinary, "install", "\(dir)/e.ferry", "--checkpoint-mib", "1", "--config",
                sandbox.configurationPath,
            ]
            var resumed = 0
            for round in 0..<3 {
                // Kill once the journal shows chunks written past a checkpoint.
                let process = try SpawnedProcess(install)
                let deadline = WallClock.monotonicSeconds() + 60
                while process.isRunning && WallClock.monotonicSeconds() < deadline {
                    if let journal = store.installJournal(),
                        (journal.chunksDone["rootfs_b"] ?? 0) >= 2 + 3 * round || !journal.completed.isEmpty
                    {
                        break
                    }
                    sleepSeconds(0.005)
                }
                guard process.kill() == nil else { continue }
                let again = try Shell.run(install)
                if again.output.contains("Resumed") { resumed += 1 }
                try Self.expectInstalled(sandbox, again, images)
                // Back to A as the booted group's partner for the next round: install over B again.
                _ = try Self.ferry(sandbox, ["env", "set", "BOOT_ORDER=A B"])
            }
            #expect(resumed >= 1, "no run resumed from a journal")
        }
    }

    /// A delta, an app and a settings document, encrypted like images.
    @Test func deltaAppAndSettingsPayloadsInstallEncrypted() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeDeviceKey("device", ec: true)
            try sandbox.editConfiguration { object in
                object["deviceKey"] = .object(["key": .string("device.key"), "certificate": .string("device.pem")])
                object["appStore"] = .string("apps")
                object["settingsStore"] = .string("settings")
            }
            let factory = "\(dir)/images/factory-rootfs.img"
            var rootfs = try readFile(factory)
            rootfs.replaceSubrange((1 << 20)..<(2 << 20), with: seededBytes(count: 1 << 20, seed: 44))
            try makeFile("\(dir)/new-rootfs.img", bytes: rootfs)
            let app = seededBytes(count: 300_000, seed: 45)
            try makeFile("\(dir)/viewer.pkg", bytes: app)
            let settings = "{\"apn\": \"internet.example\", \"secret\": \"carrier-value-91f3\"}\n"
            try DurableFile.write(settings, to: "\(dir)/carrier.json")
            let result = try Shell.run(
                [
                    TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version",
                    "1.1.0", "--cert", "\(dir)/pki/signer1.pem", "--key", "\(dir)/pki/signer1.key", "--image",
                    "rootfs=\(dir)/new-rootfs.img", "--delta-from", "rootfs=\(factory)", "--app",
                    "viewer=\(dir)/viewer.pkg",
                    "--settings", "carrier=\(dir)/carrier.json", "--chunk-size", "1M", "--encrypt-to",
                    "\(dir)/device.pem",
                ] + TestEnvironment.codecArguments + [
                    "-o", "\(dir)/e.ferry",
                ])
            #expect(result.status == 0, "\(result.output)")
            let info = try Shell.check([TestEnvironment.ferryBinary, "bundle", "info", "\(dir)/e.ferry"])
            #expect(
                info.contains("rootfs.delta.enc") && info.contains("viewer.app\(TestEnvironment.payloadSuffix).enc"),
                "\(info)")
            let install = try Self.ferry(sandbox, ["install", "\(dir)/e.ferry"])
            try Self.expectInstalled(sandbox, install, [("rootfs", rootfs)])
            let boot = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(boot.output.contains("booted group B"), "\(boot.output)")
            #expect(try readFile("\(dir)/apps/viewer/1.1.0/viewer.pkg") == app)
            #expect(try TextFile.read("\(dir)/settings/carrier") == settings)
        }
    }

    /// No plaintext of an encrypted payload touches a file other than its target: the state
    /// directory and the temporary directory are searched for pieces of every payload while the
    /// install runs and after it.
    @Test func noPlaintextTouchesAFileButItsTarget() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeDeviceKey("device")
            try sandbox.editConfiguration { object in
                object["deviceKey"] = .string("device.key")
                object["appStore"] = .string("apps")
                object["settingsStore"] = .string("settings")
            }
            let images = try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/images.ferry", seed: 6)
            let app = seededBytes(count: 400_000, seed: 46)
            try makeFile("\(dir)/viewer.pkg", bytes: app)
            let settings = Array("{\"secret\": \"plaintext-marker-5d2e9a71c4b8f036\"}\n".utf8)
            try makeFile("\(dir)/carrier.json", bytes: settings)
            var options = BundleWriter.Options.forTests(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!,
                images: ["rootfs", "modem", "tee"].map { BundleWriter.Image(slotClass: $0, path: "\(dir)/\($0).img") }
                    + [
                        BundleWriter.Image(
                            slotClass: "viewer", path: "\(dir)/viewer.pkg",
                            app: Manifest.AppInfo(name: "viewer", version: "1.1.0", file: "viewer.pkg")),
                        BundleWriter.Image(
                            slotClass: "carrier", path: "\(dir)/carrier.json",
                            settings: Manifest.SettingsInfo(name: "carrier", format: "json", mergePatch: false)),
                    ],
                signers: [BundleWriter.Signer(certificate: "\(dir)/pki/signer1.pem", key: "\(dir)/pki/signer1.key")])
            options.chunkSize = 1 << 20
            options.recipients = ["\(dir)/device.pem"]
            try BundleWriter.create(options, output: "\(dir)/e.ferry", logger: quietLogger)

            // 32-byte pieces of every payload, every 64 KiB.
            var pieces: [[UInt8]] = [Array(settings[12..<44])]
            for bytes in images.map(\.1) + [app] {
                for offset in stride(from: 0, to: bytes.count - 32, by: 64 << 10) {
                    pieces.append(Array(bytes[offset..<(offset + 32)]))
                }
            }
            let temporary = "\(dir)/tmp"
            try DurableFile.createDirectory(temporary)
            let watched = [try sandbox.configuration().stateDirectory, temporary]
            var found: [String] = []
            var looks = 0
            func look() {
                looks += 1
                for folder in watched {
                    for path in files(under: folder) {
                        guard let bytes = try? readFile(path), !bytes.isEmpty else { continue }
                        if pieces.contains(where: { contains(bytes, $0) }) { found.append(path) }
                    }
                }
            }
            // The search finds a piece where there is one.
            try makeFile("\(temporary)/planted", bytes: [1, 2, 3] + pieces[7] + [4])
            look()
            #expect(found == ["\(temporary)/planted"])
            try FileSystem.remove("\(temporary)/planted")
            found = []
            looks = 0
            let process = try SpawnedProcess(
                [TestEnvironment.ferryBinary, "install", "\(dir)/e.ferry", "--config", sandbox.configurationPath],
                environment: ["TMPDIR": temporary])
            while process.isRunning { look() }
            #expect(process.wait() == 0)
            look()
            #expect(looks > 3, "the install ended before it was watched")
            #expect(found.isEmpty, "plaintext found in \(Set(found).sorted())")
            for (name, bytes) in images { #expect(try Self.slot(sandbox, "\(name)_b", bytes.count) == bytes) }
        }
    }
}

/// Every regular file under `folder`, at any depth.
private func files(under folder: String) -> [String] {
    FileSystem.entries(folder).flatMap { entry -> [String] in
        let path = "\(folder)/\(entry)"
        switch FileSystem.kind(of: path) {
        case .directory: return files(under: path)
        case .file: return [path]
        default: return []
        }
    }
}

/// Whether `needle` occurs in `haystack`.
private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    haystack.firstRange(of: needle) != nil
}
