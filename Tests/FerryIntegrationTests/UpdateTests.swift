import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

/// `ferry check` and `ferry update` against a real HTTPS server on loopback (nginx) serving a
/// signed index and two bundles of one release (a rootfs delta from the factory image, and full
/// images): the choice between delta and full, the fallback to full, "up to date", and every
/// refusal of a bad index (unsigned, tampered, expired, replayed) with nothing written.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"),
    .enabled(if: HTTPSServer.available, "needs openssl and nginx (tools/install-deps installs them)"))
struct UpdateTests {
    struct Server {
        let sandbox: Sandbox
        let www: String
        let server: HTTPSServer
        let images: [String: [UInt8]]
        var index: String { server.url + "index.json" }
        var config: [String] { ["--config", sandbox.configurationPath] }

        func ferry(_ arguments: [String]) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary] + arguments + config)
        }

        func environment() throws -> String { try ferry(["env", "list"]).output }

        /// Signs a new index of `bundles` (file names in www).
        func publish(serial: Int64, bundles: [String], expires: String? = nil, signer: String = "signer1") throws {
            var arguments = [
                TestEnvironment.ferryBinary, "bundle", "index", "-o", "\(www)/index.json", "--serial", "\(serial)",
                "--cert", "\(sandbox.directory)/pki/\(signer).pem", "--key", "\(sandbox.directory)/pki/\(signer).key",
            ]
            if let expires { arguments += ["--expires", expires] }
            let result = try Shell.run(arguments + bundles.map { "\(www)/\($0)" })
            #expect(result.status == 0, "\(result.output)")
        }

        /// Writes `index` as www/index.json with one signature by `signer` (for indexes that
        /// `ferry bundle index` refuses to make: expired ones, forged entries).
        func publish(_ index: UpdateIndex, signer: String = "signer1") throws {
            let bytes = index.serialized()
            let signature = try CMS.sign(
                content: bytes, certificatePath: "\(sandbox.directory)/pki/\(signer).pem",
                keyPath: "\(sandbox.directory)/pki/\(signer).key")
            try DurableFile.write(signature, to: "\(www)/index.json.1.p7s")
            try DurableFile.write(bytes, to: "\(www)/index.json")
        }

        /// The entry `ferry bundle index` writes for www/`name`.
        func entry(_ name: String) throws -> UpdateIndex.Entry {
            let reader = BundleReader(source: try FileByteSource(path: "\(www)/\(name)"))
            try reader.readSignedManifest()
            let bytes = try readFile("\(www)/\(name)")
            return UpdateIndex.entry(
                for: try Manifest.parse(reader.manifestBytes), manifestBytes: reader.manifestBytes, url: name,
                size: Int64(bytes.count),
                sha256: SHA256Hasher.hash(bytes))
        }

        /// What a refusal before writing must leave as it was: the raw boot environment (the
        /// whole boot partition), the slot records, and no install journal.
        func untouchedState() throws -> [UInt8] {
            try slot("boot", 8 << 20) + readFile("\(sandbox.directory)/state/slots.json")
                + (TextFile.exists("\(sandbox.directory)/state/install.json") ? Array("journal".utf8) : [])
        }

        func slot(_ label: String, _ count: Int) throws -> [UInt8] {
            let partition = try PartitionTable.read(sandbox.diskPath).partition(
                .partitionLabel(label), disk: sandbox.diskPath)
            return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(at: 0, count: count)
        }

        func expectInstalled(sourceLocation: SourceLocation = #_sourceLocation) throws {
            for (name, bytes) in images {
                #expect(try slot("\(name)_b", bytes.count) == bytes, "\(name)_b", sourceLocation: sourceLocation)
            }
            #expect(try environment().contains("BOOT_ORDER=B A"), sourceLocation: sourceLocation)
        }
    }

    /// A pinned sandbox, release 1.1.0 as `delta-1.1.0.ferry` (rootfs delta) and `full-1.1.0.ferry`,
    /// an index of both (serial 1), and nginx serving them.
    static func withServer(_ dir: String, _ body: (Server) throws -> Void) throws {
        let sandbox = try Sandbox.make(in: dir)
        let tls = try TestTLS.make(in: "\(dir)/tls")
        let www = "\(dir)/www"
        try DurableFile.createDirectory(www)
        var object =
            try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
            .objectValue ?? [:]
        object["tlsPins"] = .array([.string(try tls.certificatePin("server"))])
        object["network"] = .object(["retryDelaySeconds": .number(0.05), "retries": .number(1)])
        try DurableFile.write(
            String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)

        let factory = "\(sandbox.directory)/images/factory-rootfs.img"
        let images: [String: [UInt8]] = [
            "rootfs": DeltaInstallTests.newRootfs(from: try readFile(factory)),
            "modem": seededBytes(count: 2 << 20, seed: 2), "tee": seededBytes(count: 1 << 20, seed: 3),
        ]
        for (name, bytes) in images { try makeFile("\(dir)/new-\(name).img", bytes: bytes) }
        let common =
            [
                TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version",
                "1.1.0",
                "--cert", "\(sandbox.directory)/pki/signer1.pem", "--key", "\(sandbox.directory)/pki/signer1.key",
                "--image", "rootfs=\(dir)/new-rootfs.img", "--image", "modem=\(dir)/new-modem.img", "--image",
                "tee=\(dir)/new-tee.img",
                "--chunk-size", "1M",
            ] + TestEnvironment.codecArguments
        _ = try Shell.check(common + ["-o", "\(www)/full-1.1.0.ferry"])
        _ = try Shell.check(common + ["--delta-from", "rootfs=\(factory)", "-o", "\(www)/delta-1.1.0.ferry"])
        let server = try HTTPSServer.nginx(root: www, tls: tls, state: "\(dir)/nginx")
        defer { server.stop() }
        let context = Server(sandbox: sandbox, www: www, server: server, images: images)
        try context.publish(serial: 1, bundles: ["full-1.1.0.ferry", "delta-1.1.0.ferry"])
        try body(context)
    }

    @Test func checkPrefersTheDeltaThenUpdateBootConfirmAndUpToDate() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                let check = try server.ferry(["check", server.index, "--json"])
                #expect(check.status == 0, "\(check.output)")
                let decision =
                    try JSONValue.parse(Array(check.output.utf8), what: "check", code: .internal).objectValue ?? [:]
                #expect(decision["updateAvailable"] == .bool(true))
                #expect(decision["entry"]?.objectValue?["kind"] == .string("delta"), "\(check.output)")
                #expect(decision["entry"]?.objectValue?["url"] == .string(server.server.url + "delta-1.1.0.ferry"))
                #expect(decision["fallback"]?.objectValue?["kind"] == .string("full"))

                let update = try server.ferry(["update", server.index, "--progress", "lines"])
                #expect(update.status == 0, "\(update.output)")
                #expect(update.output.contains("Installing 1.1.0 (delta) from \(server.server.url)delta-1.1.0.ferry"))
                try server.expectInstalled()
                // Only the delta bundle was downloaded.
                #expect(!server.server.accessLog().contains { $0.contains("full-1.1.0.ferry") })

                let boot = try Shell.run(
                    ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", server.sandbox.directory],
                    environment: ["FERRY": TestEnvironment.ferryBinary])
                #expect(boot.output.contains("booted group B"), "\(boot.output)")
                let again = try server.ferry(["check", server.index])
                #expect(again.status == 3, "\(again.output)")
                #expect(again.output.hasPrefix("Up to date: the booted group runs 1.1.0"), "\(again.output)")
                #expect(try server.ferry(["update", server.index]).status == 3)
            }
        }
    }

    @Test func aDeltaWhoseSourceDiffersFallsBackToTheFullBundle() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                // The slot record still names the factory image, but rootfs_a differs where the delta reads.
                let reader = BundleReader(source: try FileByteSource(path: "\(server.www)/delta-1.1.0.ferry"))
                try reader.readSignedManifest()
                let check = try #require(
                    try Manifest.parse(reader.manifestBytes).payloads.first?.delta?.sourceChecks.first)
                let partition = try PartitionTable.read(server.sandbox.diskPath).partition(
                    .partitionLabel("rootfs_a"), disk: server.sandbox.diskPath)
                let disk = try BlockDevice.openExclusive(server.sandbox.diskPath)
                var byte = try disk.read(at: partition.range.lowerBound + check.range.lowerBound, count: 1)
                byte[0] ^= 0xFF
                try disk.write(byte, at: partition.range.lowerBound + check.range.lowerBound)
                try disk.close()

                let update = try server.ferry(["update", server.index])
                #expect(update.status == 0, "\(update.output)")
                #expect(
                    update.output.contains("The delta does not apply to this device (delta needs source sha256"),
                    "\(update.output)")
                #expect(update.output.contains("Installing 1.1.0 (full image)"), "\(update.output)")
                try server.expectInstalled()
            }
        }
    }

    @Test func badIndexesAreRefusedAndNothingIsWritten() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                let before = try server.environment()
                func expectRefused(
                    _ code: FerryError.Code, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
                ) throws {
                    for command in ["check", "update"] {
                        let result = try server.ferry([command, server.index])
                        #expect(
                            result.status == code.exitStatus, "\(what), \(command): \(result.output)",
                            sourceLocation: sourceLocation)
                        #expect(
                            result.output.hasPrefix("ferry: error: ")
                                && result.output.split(separator: "\n").count == 1,
                            "\(what): \(result.output)", sourceLocation: sourceLocation)
                    }
                    #expect(
                        try server.environment() == before, "\(what): the environment changed",
                        sourceLocation: sourceLocation)
                }
                let index = "\(server.www)/index.json"
                let signed = try readFile(index)

                // Tampered after signing: one entry's version changed.
                let tampered = String(decoding: signed, as: UTF8.self).replacing("\"1.1.0\"", with: "\"1.1.1\"")
                try DurableFile.write(tampered, to: index)
                try expectRefused(.signatureInvalid, "a tampered index")

                // Unsigned.
                try makeFile(index, bytes: signed)
                try Shell.check(["mv", "\(index).1.p7s", "\(dir)/saved.p7s"])
                try expectRefused(.signatureInvalid, "an unsigned index")
                try Shell.check(["mv", "\(dir)/saved.p7s", "\(index).1.p7s"])

                // Signed by a signer the device does not trust.
                let stranger = try TestPKI.make(in: "\(dir)/stranger", signers: ["mallory"])
                try Shell.check([
                    "cp", stranger.certificate("mallory"), stranger.key("mallory"), "\(server.sandbox.directory)/pki/",
                ])
                try server.publish(serial: 2, bundles: ["full-1.1.0.ferry"], signer: "mallory")
                try expectRefused(.untrusted, "an index signed by an untrusted key")

                // Expired (a frozen index). `ferry bundle index` refuses to make one: signed by hand.
                let expired = try #require(WallClock.parseISO8601("2021-01-01T00:00:00Z"))
                try server.publish(
                    UpdateIndex(
                        serial: 3, created: expired - 86_400, expires: expired,
                        entries: [try server.entry("full-1.1.0.ferry")]))
                try expectRefused(.expired, "an expired index")

                // An index of format 1 (no manifest hashes).
                let formatOne = String(
                    decoding: UpdateIndex(
                        serial: 4, created: WallClock.now(), expires: WallClock.now() + 86_400,
                        entries: [try server.entry("full-1.1.0.ferry")]
                    ).serialized(), as: UTF8.self
                )
                .replacing("\"formatVersion\": 2", with: "\"formatVersion\": 1")
                try makeFile(index, bytes: Array(formatOne.utf8))
                try makeFile(
                    "\(index).1.p7s",
                    bytes: try CMS.sign(
                        content: Array(formatOne.utf8), certificatePath: "\(server.sandbox.directory)/pki/signer1.pem",
                        keyPath: "\(server.sandbox.directory)/pki/signer1.key"))
                try expectRefused(.bundleInvalid, "an index of format 1")

                // Accept serial 5, then a replay of serial 4, or another index numbered 5: refused.
                try server.publish(serial: 5, bundles: ["full-1.1.0.ferry", "delta-1.1.0.ferry"])
                #expect(try server.ferry(["check", server.index]).status == 0)
                try server.publish(serial: 4, bundles: ["full-1.1.0.ferry", "delta-1.1.0.ferry"])
                try expectRefused(.downgrade, "a replayed index")
                try server.publish(serial: 5, bundles: ["full-1.1.0.ferry"])
                try expectRefused(.downgrade, "another index with the accepted serial")
            }
        }
    }

    @Test func entriesForAnotherDeviceOrNotNewerAreIgnored() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                // A 2.0.0 for another compatible, and a 1.0.0 (the booted version) for this one.
                for (version, compatible) in [("2.0.0", "other-board"), ("1.0.0", "ferry-demo-x86_64")] {
                    _ = try Shell.check(
                        [
                            TestEnvironment.ferryBinary, "bundle", "create", "--compatible", compatible, "--version",
                            version,
                            "--cert", "\(server.sandbox.directory)/pki/signer1.pem", "--key",
                            "\(server.sandbox.directory)/pki/signer1.key",
                            "--image", "rootfs=\(dir)/new-rootfs.img", "--image", "modem=\(dir)/new-modem.img",
                            "--image",
                            "tee=\(dir)/new-tee.img",
                        ] + TestEnvironment.codecArguments + [
                            "-o", "\(server.www)/\(compatible)-\(version).ferry",
                        ])
                }
                try server.publish(serial: 7, bundles: ["other-board-2.0.0.ferry", "ferry-demo-x86_64-1.0.0.ferry"])
                let check = try server.ferry(["check", server.index])
                #expect(check.status == 3, "\(check.output)")
                #expect(check.output.hasPrefix("Up to date: the booted group runs 1.0.0"), "\(check.output)")
                let json = try server.ferry(["check", server.index, "--json"])
                #expect(json.status == 3, "\(json.output)")
                let decision =
                    try JSONValue.parse(Array(json.output.utf8), what: "check", code: .internal).objectValue ?? [:]
                #expect(decision["updateAvailable"] == .bool(false) && decision["entry"] == nil, "\(json.output)")
            }
        }
    }

    // MARK: - The index binds its bundles (issue 18)

    /// A server swaps the file behind an entry for another validly signed bundle of the same size
    /// (an older release): refused when its manifest is read, before anything is written.
    @Test func aSwappedBundleIsRefusedWhenItsManifestIsReadAndNothingChanges() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                try server.publish(serial: 2, bundles: ["full-1.1.0.ferry"])
                // The same images as 1.1.0, signed as 1.0.9: the same size, another manifest.
                _ = try Shell.check(
                    [
                        TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64",
                        "--version",
                        "1.0.9",
                        "--cert", "\(server.sandbox.directory)/pki/signer1.pem", "--key",
                        "\(server.sandbox.directory)/pki/signer1.key",
                        "--image", "rootfs=\(dir)/new-rootfs.img", "--image", "modem=\(dir)/new-modem.img", "--image",
                        "tee=\(dir)/new-tee.img",
                        "--chunk-size", "1M",
                    ] + TestEnvironment.codecArguments + [
                        "-o", "\(dir)/older.ferry",
                    ])
                let original = try readFile("\(server.www)/full-1.1.0.ferry")
                let older = try readFile("\(dir)/older.ferry")
                try #require(
                    older.count == original.count && older != original, "the swapped bundle must have the same size")
                try makeFile("\(server.www)/full-1.1.0.ferry", bytes: older)

                let before = try server.untouchedState()
                let update = try server.ferry(["update", server.index])
                #expect(update.status == FerryError.Code.notIndexed.exitStatus, "\(update.output)")
                #expect(
                    update.output.contains(
                        "is not the bundle the update index names for 1.1.0: its manifest has SHA-256"),
                    "\(update.output)")
                #expect(
                    try server.untouchedState() == before,
                    "a refusal known before writing changed the environment or the state")
            }
        }
    }

    /// The entry binds the right manifest but names a SHA-256 the file does not have: the file is
    /// refused before the switch (the target group stays bad, the booted one primary).
    @Test func aFileWithAnotherSHA256IsRefusedBeforeTheSwitch() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                var entry = try server.entry("full-1.1.0.ferry")
                entry.sha256 = SHA256Hasher.hash(Array("another file".utf8))
                try server.publish(
                    UpdateIndex(
                        serial: 2, created: WallClock.now(), expires: WallClock.now() + 86_400, entries: [entry]))
                let update = try server.ferry(["update", server.index])
                #expect(update.status == FerryError.Code.notIndexed.exitStatus, "\(update.output)")
                #expect(update.output.contains("not the \(entry.sha256.hex) the update index says"), "\(update.output)")
                let environment = try server.environment()
                #expect(environment.contains("BOOT_ORDER=A"), "\(environment)")
                #expect(environment.contains("BOOT_B_LEFT=0"), "\(environment)")
            }
        }
    }

    /// A response whose size is not the entry's is refused as soon as its headers arrive.
    @Test func aResponseOfAnotherSizeIsRefusedBeforeItsContent() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                var entry = try server.entry("full-1.1.0.ferry")
                entry.size -= 512
                try server.publish(
                    UpdateIndex(
                        serial: 2, created: WallClock.now(), expires: WallClock.now() + 86_400, entries: [entry]))
                let before = try server.untouchedState()
                let update = try server.ferry(["update", server.index])
                #expect(update.status == FerryError.Code.notIndexed.exitStatus, "\(update.output)")
                #expect(update.output.contains("refused before its content was read"), "\(update.output)")
                #expect(try server.untouchedState() == before)
            }
        }
    }

    /// A server that sends a little and then only a few bytes a second, on every connection:
    /// each reconnect makes some progress, so a retry budget alone never ran out. `ferry update`
    /// gives up within the bound its configuration implies (exit 57), and the next run resumes.
    @Test func aTricklingServerIsGivenUpWithinTheRateBoundAndTheNextRunResumes() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                let window = 4
                let minimum = 64 << 10
                var object =
                    try JSONValue.parse(
                        try readFile(server.sandbox.configurationPath), what: "system.json", code: .internal
                    ).objectValue ?? [:]
                object["network"] = .object([
                    "retryDelaySeconds": .number(0.05), "retries": .number(1), "stallTimeoutSeconds": .number(2),
                    "minimumBytesPerSecond": .number(Double(minimum)), "rateWindowSeconds": .number(Double(window)),
                ])
                try DurableFile.write(
                    String(decoding: JSONValue.object(object).serialized(), as: UTF8.self),
                    to: server.sandbox.configurationPath)
                try server.publish(serial: 2, bundles: ["full-1.1.0.ferry"])
                // Every connection: 24 KiB at full speed (the TLS handshake, the headers and about
                // one TLS record of the body), then 20 bytes a second. The index and its signature
                // are smaller and pass whole; only bundle connections ever start to trickle.
                let trickleStarts = Mutex<[Double]>([])
                let port = try #require(
                    Int(server.server.url.split(separator: ":").last?.split(separator: "/").first ?? ""))
                let proxy = try TCPProxy(
                    upstreamPort: port,
                    behaviours: Array(repeating: .trickle(afterBytes: 24 << 10, bytesPerSecond: 20), count: 1000),
                    onBreak: { _ in trickleStarts.withLock { $0.append(WallClock.monotonicSeconds()) } })
                defer { proxy.stop() }
                let slowIndex = server.index.replacing(":\(port)/", with: ":\(proxy.port)/")

                let update = try server.ferry(["update", slowIndex])
                let ended = WallClock.monotonicSeconds()
                #expect(update.status == FerryError.Code.tooSlow.exitStatus, "\(update.output)")
                #expect(
                    update.output.contains("less than network.minimumBytesPerSecond (\(minimum) bytes/s)"),
                    "\(update.output)")
                #expect(update.output.contains("run the same command again to continue"), "\(update.output)")
                // The bound (docs/configuration.md): the bundle's download never reaches the
                // minimum, so it gives up once it has waited `window` seconds, plus at most one
                // (the window counts whole seconds); plus the process's exit. It began just before
                // its first connection started to trickle.
                let started = try #require(trickleStarts.withLock { $0.first })
                let took = ended - started
                print(
                    "trickle: gave up \(took) s after the download began (bound: \(window) to \(window + 1) s of waiting)"
                )
                #expect(
                    took >= Double(window) - 0.5 && took <= Double(window) + 1 + 1,
                    "gave up \(took) s after the download began")
                #expect(proxy.connections >= 3, "every connection made some progress: \(proxy.connections) connections")
                #expect(TextFile.exists("\(server.sandbox.directory)/state/install.json"), "no journal to resume from")

                let resumed = try server.ferry(["update", server.index])
                #expect(resumed.status == 0, "\(resumed.output)")
                #expect(resumed.output.contains("Resumed and installed 1.1.0"), "\(resumed.output)")
                try server.expectInstalled()
            }
        }
    }
}
