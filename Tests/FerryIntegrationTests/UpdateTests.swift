import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// `ferry check` and `ferry update` against a real HTTPS server on loopback (nginx) serving a
/// signed index and two bundles of one release (a rootfs delta from the factory image, and full
/// images): the choice between delta and full, the fallback to full, "up to date", and every
/// refusal of a bad index (unsigned, tampered, expired, replayed) with nothing written.
@Suite(
    .serialized,
    .enabled(if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"),
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

        func slot(_ label: String, _ count: Int) throws -> [UInt8] {
            let partition = try PartitionTable.read(sandbox.diskPath).partition(.partitionLabel(label), disk: sandbox.diskPath)
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
        var object = try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal).objectValue ?? [:]
        object["tlsPins"] = .array([.string(try tls.certificatePin("server"))])
        object["network"] = .object(["retryDelaySeconds": .number(0.05), "retries": .number(1)])
        try DurableFile.write(String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)

        let factory = "\(sandbox.directory)/images/factory-rootfs.img"
        let images: [String: [UInt8]] = [
            "rootfs": DeltaInstallTests.newRootfs(from: try readFile(factory)),
            "modem": seededBytes(count: 2 << 20, seed: 2), "tee": seededBytes(count: 1 << 20, seed: 3),
        ]
        for (name, bytes) in images { try makeFile("\(dir)/new-\(name).img", bytes: bytes) }
        let common = [
            TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version", "1.1.0",
            "--cert", "\(sandbox.directory)/pki/signer1.pem", "--key", "\(sandbox.directory)/pki/signer1.key",
            "--image", "rootfs=\(dir)/new-rootfs.img", "--image", "modem=\(dir)/new-modem.img", "--image", "tee=\(dir)/new-tee.img",
            "--chunk-size", "1M",
        ]
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
                let decision = try JSONValue.parse(Array(check.output.utf8), what: "check", code: .internal).objectValue ?? [:]
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
                let check = try #require(try Manifest.parse(reader.manifestBytes).payloads.first?.delta?.sourceChecks.first)
                let partition = try PartitionTable.read(server.sandbox.diskPath).partition(.partitionLabel("rootfs_a"), disk: server.sandbox.diskPath)
                let disk = try BlockDevice.openExclusive(server.sandbox.diskPath)
                var byte = try disk.read(at: partition.range.lowerBound + check.range.lowerBound, count: 1)
                byte[0] ^= 0xFF
                try disk.write(byte, at: partition.range.lowerBound + check.range.lowerBound)
                try disk.close()

                let update = try server.ferry(["update", server.index])
                #expect(update.status == 0, "\(update.output)")
                #expect(update.output.contains("The delta does not apply to this device (delta needs source sha256"), "\(update.output)")
                #expect(update.output.contains("Installing 1.1.0 (full image)"), "\(update.output)")
                try server.expectInstalled()
            }
        }
    }

    @Test func badIndexesAreRefusedAndNothingIsWritten() async throws {
        try await withTemporaryDirectory { dir in
            try Self.withServer(dir) { server in
                let before = try server.environment()
                func expectRefused(_ code: FerryError.Code, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
                    for command in ["check", "update"] {
                        let result = try server.ferry([command, server.index])
                        #expect(result.status == code.exitStatus, "\(what), \(command): \(result.output)", sourceLocation: sourceLocation)
                        #expect(result.output.hasPrefix("ferry: error: ") && result.output.split(separator: "\n").count == 1,
                                "\(what): \(result.output)", sourceLocation: sourceLocation)
                    }
                    #expect(try server.environment() == before, "\(what): the environment changed", sourceLocation: sourceLocation)
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
                try Shell.check(["cp", stranger.certificate("mallory"), stranger.key("mallory"), "\(server.sandbox.directory)/pki/"])
                try server.publish(serial: 2, bundles: ["full-1.1.0.ferry"], signer: "mallory")
                try expectRefused(.untrusted, "an index signed by an untrusted key")

                // Expired (a frozen index).
                try server.publish(serial: 3, bundles: ["full-1.1.0.ferry"], expires: "2021-01-01T00:00:00Z")
                try expectRefused(.expired, "an expired index")

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
                    _ = try Shell.check([
                        TestEnvironment.ferryBinary, "bundle", "create", "--compatible", compatible, "--version", version,
                        "--cert", "\(server.sandbox.directory)/pki/signer1.pem", "--key", "\(server.sandbox.directory)/pki/signer1.key",
                        "--image", "rootfs=\(dir)/new-rootfs.img", "--image", "modem=\(dir)/new-modem.img", "--image", "tee=\(dir)/new-tee.img",
                        "-o", "\(server.www)/\(compatible)-\(version).ferry",
                    ])
                }
                try server.publish(serial: 7, bundles: ["other-board-2.0.0.ferry", "ferry-demo-x86_64-1.0.0.ferry"])
                let check = try server.ferry(["check", server.index])
                #expect(check.status == 3, "\(check.output)")
                #expect(check.output.hasPrefix("Up to date: the booted group runs 1.0.0"), "\(check.output)")
                let json = try server.ferry(["check", server.index, "--json"])
                #expect(json.status == 3, "\(json.output)")
                let decision = try JSONValue.parse(Array(json.output.utf8), what: "check", code: .internal).objectValue ?? [:]
                #expect(decision["updateAvailable"] == .bool(false) && decision["entry"] == nil, "\(json.output)")
            }
        }
    }
}
