import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `ferry install https://…` onto sandbox devices from real servers on 127.0.0.1 (nginx, and
/// `openssl s_server` for forced protocol versions): streamed, pinned, resumed after a cut or a
/// kill with range requests; and every refusal leaves the boot environment as it was.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"),
    .enabled(if: HTTPSServer.available, "needs openssl and nginx (tools/install-deps installs them)"))
struct HTTPSInstallTests {
    struct Device {
        let sandbox: Sandbox
        let tls: TestTLS
        let www: String
        let images: [(String, [UInt8])]
        var config: [String] { ["--config", sandbox.configurationPath] }

        /// A sandbox whose configuration pins `pinned` (a certificate of `tls`), with a 16 MiB
        /// bundle `update.ferry` (incompressible, so the download is as large as the images) in `www/`.
        /// - Parameter encrypted: the bundle is encrypted to a device key the configuration names.
        init(_ directory: String, pinned: String = "server", retries: Int = 5, encrypted: Bool = false) throws {
            sandbox = try Sandbox.make(in: directory)
            tls = try TestTLS.make(in: "\(directory)/tls")
            www = "\(directory)/www"
            try DurableFile.createDirectory(www)
            if encrypted { try sandbox.makeDeviceKey("device") }
            images = try sandbox.makeUpdate(
                [("rootfs", 12 << 20), ("modem", 3 << 20), ("tee", 1 << 20)], output: "\(www)/update.ferry", preset: 0,
                seed: 31, encryptTo: encrypted ? ["\(sandbox.directory)/device.pem"] : [])
            var object =
                try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
                .objectValue ?? [:]
            object["tlsPins"] = .array([.string(try tls.certificatePin(pinned))])
            object["network"] = .object([
                "retryDelaySeconds": .number(0.05), "stallTimeoutSeconds": .number(3),
                "connectTimeoutSeconds": .number(5),
                "retries": .number(Double(retries)),
            ])
            if encrypted {
                object["deviceKey"] = .object(["key": .string("device.key"), "certificate": .string("device.pem")])
                object["requireEncryption"] = .bool(true)
            }
            try DurableFile.write(
                String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)
        }

        func ferry(_ arguments: [String], environment: [String: String] = [:]) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary] + arguments + config, environment: environment)
        }

        func environment() throws -> String { try ferry(["env", "list"]).output }

        func slot(_ label: String, _ count: Int) throws -> [UInt8] {
            let partition = try PartitionTable.read(sandbox.diskPath).partition(
                .partitionLabel(label), disk: sandbox.diskPath)
            return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(at: 0, count: count)
        }

        func expectInstalled(_ result: Shell.Result, sourceLocation: SourceLocation = #_sourceLocation) throws {
            #expect(result.status == 0, "\(result.output)", sourceLocation: sourceLocation)
            for (name, bytes) in images {
                #expect(try slot("\(name)_b", bytes.count) == bytes, "\(name)_b", sourceLocation: sourceLocation)
            }
            #expect(try environment().contains("BOOT_ORDER=B A"), sourceLocation: sourceLocation)
        }

        /// Runs a failing install and checks its exit status, and that the environment is unchanged.
        func expectRefused(
            _ url: String, _ code: FerryError.Code, environment variables: [String: String] = [:],
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let before = try environment()
            let result = try ferry(["install", url], environment: variables)
            #expect(result.status == code.exitStatus, "\(result.output)", sourceLocation: sourceLocation)
            // One error line, after any progress lines.
            let last = result.output.split(separator: "\n").last ?? ""
            #expect(last.hasPrefix("ferry: error: "), "\(result.output)", sourceLocation: sourceLocation)
            #expect(
                result.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error:") }.count == 1,
                "\(result.output)",
                sourceLocation: sourceLocation)
            #expect(try environment() == before, "the boot environment changed", sourceLocation: sourceLocation)
        }
    }

    @Test func installsOverTLS13FromNginx() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            try device.expectInstalled(
                try device.ferry(["install", server.url + "update.ferry", "--progress", "lines"]))
            #expect(try device.ferry(["status"]).output.contains(server.url + "update.ferry"))
        }
    }

    @Test func installsOverTLS12FromOpenSSL() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let server = try HTTPSServer.openssl(root: device.www, tls: device.tls, version: "1.2")
            defer { server.stop() }
            try device.expectInstalled(try device.ferry(["install", server.url + "update.ferry"]))
        }
    }

    @Test func refusalsLeaveTheEnvironmentUntouched() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, pinned: "other")
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            // Pinned to another certificate of the same CA and name.
            try device.expectRefused(server.url + "update.ferry", .pinMismatch)
            #expect(server.accessLog().isEmpty)
            try device.expectRefused("http://127.0.0.1:\(server.port)/update.ferry", .insecureURL)
        }
    }

    @Test func statusErrorsAndOldProtocolsLeaveTheEnvironmentUntouched() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            try device.expectRefused(server.url + "missing.ferry", .httpStatus)
            try device.expectRefused(server.url + "status/500", .httpStatus)
            try device.expectRefused(server.url + "redirect-http/update.ferry", .insecureURL)
            let old = try HTTPSServer.openssl(root: device.www, tls: device.tls, version: "1.1")
            defer { old.stop() }
            let permissive = "\(dir)/permissive.cnf"
            try DurableFile.write(
                "openssl_conf = c\n[c]\nssl_conf = s\n[s]\nsystem_default = d\n[d]\nMinProtocol = TLSv1\nCipherString = DEFAULT@SECLEVEL=0\n",
                to: permissive)
            try device.expectRefused(old.url + "update.ferry", .tlsHandshake, environment: ["OPENSSL_CONF": permissive])
        }
    }

    @Test func aStalledServerTimesOutAndLeavesTheEnvironmentUntouched() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, retries: 1)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            // Every connection stalls mid-payload: past the manifest, inside the first slot.
            let proxy = try TCPProxy(
                upstreamPort: server.port, behaviours: [.relay, .stall(afterBytes: 3 << 20), .stall(afterBytes: 0)])
            defer { proxy.stop() }
            let started = WallClock.monotonicSeconds()
            try device.expectRefused("https://127.0.0.1:\(proxy.port)/update.ferry", .timeout)
            #expect(WallClock.monotonicSeconds() - started < 30)
            #expect(try device.environment().contains("BOOT_B_LEFT=0"), "the half-written group must stay unbootable")
        }
    }

    /// Plain and encrypted (the chunks of an encrypted bundle are as independent as plain ones).
    @Test(arguments: [false, true]) func aConnectionCutMidPayloadResumesAndVerifies(encrypted: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, encrypted: encrypted)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            let proxy = try TCPProxy(
                upstreamPort: server.port, behaviours: [.relay, .cut(afterBytes: 6 << 20), .stall(afterBytes: 2 << 20)])
            defer { proxy.stop() }
            try device.expectInstalled(try device.ferry(["install", "https://127.0.0.1:\(proxy.port)/update.ferry"]))
            // The first window, the request cut, the one stalled, the one that finished.
            #expect(proxy.connections == 4)
            #expect(server.accessLog().first?.contains("range=\"bytes=0-262143\"") == true)
            // Every request was a range request answered with 206: the first window, the one cut and
            // the one that finished are logged when they end; the stalled one only once nginx notices
            // its closed connection, which on a loaded machine took more than 30 s (a CI run), so it
            // is waited for but not required.
            proxy.stop()
            let deadline = WallClock.monotonicSeconds() + 10
            while server.accessLog().count < 4 && WallClock.monotonicSeconds() < deadline { sleepSeconds(0.05) }
            let log = server.accessLog()
            #expect(
                log.count >= 3 && log.allSatisfy { $0.contains(" 206 ") && $0.contains("range=\"bytes=") }, "\(log)")
        }
    }

    @Test func aBundleReplacedMidDownloadNeverMixes() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            // Another release of the same size and bytes mostly alike appears under the same name.
            try device.sandbox.makeUpdate(
                [("rootfs", 12 << 20), ("modem", 3 << 20), ("tee", 1 << 20)], output: "\(dir)/next.ferry",
                version: "1.2.0", preset: 0,
                seed: 31)
            let www = device.www
            let proxy = try TCPProxy(upstreamPort: server.port, behaviours: [.relay, .cut(afterBytes: 6 << 20)]) { _ in
                _ = try? Shell.run(["cp", "\(dir)/next.ferry", "\(www)/update.tmp"])
                _ = try? Shell.run(["touch", "-d", "2030-01-01", "\(www)/update.tmp"])
                _ = try? Shell.run(["mv", "\(www)/update.tmp", "\(www)/update.ferry"])
            }
            defer { proxy.stop() }
            let before = try device.environment()
            let result = try device.ferry(["install", "https://127.0.0.1:\(proxy.port)/update.ferry"])
            #expect(result.status == FerryError.Code.contentChanged.exitStatus, "\(result.output)")
            let after = try device.environment()
            #expect(after.contains("BOOT_ORDER=A B") && before.contains("BOOT_ORDER=A B"))
            #expect(after.contains("BOOT_B_LEFT=0"), "the half-written group must stay unbootable")
            // The next attempt installs the new release cleanly.
            let again = try device.ferry(["install", server.url + "update.ferry"])
            #expect(again.status == 0 && again.output.contains("1.2.0"), "\(again.output)")
        }
    }

    /// Plain and encrypted (the chunks of an encrypted bundle are as independent as plain ones).
    @Test(arguments: [false, true]) func aKilledInstallResumesWithARangeRequest(encrypted: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, encrypted: encrypted)
            let server = try HTTPSServer.nginx(root: device.www, tls: device.tls, state: "\(dir)/nginx")
            defer { server.stop() }
            let store = StateStore(directory: try device.sandbox.configuration().stateDirectory)
            let url = server.url + "update.ferry"
            let install = [TestEnvironment.ferryBinary, "install", url, "--checkpoint-mib", "2"] + device.config
            // Kill once the journal shows a payload written past its first checkpoints.
            let process = try SpawnedProcess(install)
            let deadline = WallClock.monotonicSeconds() + 60
            while WallClock.monotonicSeconds() < deadline {
                if let journal = store.installJournal(),
                    (journal.chunksDone["rootfs_b"] ?? 0) >= 6 || !journal.completed.isEmpty
                {
                    break
                }
                sleepSeconds(0.01)
            }
            #expect(process.kill() == nil, "the install finished before it could be killed")
            // nginx logs the cut request when it notices the closed connection.
            let logged = WallClock.monotonicSeconds() + 30
            while server.accessLog().isEmpty && WallClock.monotonicSeconds() < logged { sleepSeconds(0.05) }
            let logBefore = server.accessLog().count
            let again = try Shell.run(install)
            try device.expectInstalled(again)
            #expect(again.output.contains("Resumed"), "\(again.output)")
            // The second run fetched the manifest, then jumped with a range request.
            let deadlineLog = WallClock.monotonicSeconds() + 30
            while server.accessLog().count < logBefore + 2 && WallClock.monotonicSeconds() < deadlineLog {
                sleepSeconds(0.05)
            }
            let secondRun = server.accessLog().dropFirst(logBefore)
            #expect(secondRun.contains { $0.contains(" 206 range=\"bytes=") }, "\(Array(secondRun))")
            let sent = secondRun.compactMap { $0.split(separator: "sent=").last.flatMap { Int($0) } }.reduce(0, +)
            let bundleSize = try readFile("\(device.www)/update.ferry").count
            #expect(sent < bundleSize * 3 / 4, "the resumed run downloaded \(sent) of \(bundleSize) bytes")
        }
    }
}
