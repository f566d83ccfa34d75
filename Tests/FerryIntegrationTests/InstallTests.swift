import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `ferry install` on sandbox devices through real loop devices: the happy path, keyring rotation,
/// and failures that must leave the booted group, the boot order and the target's boot state safe.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct InstallTests {
    func ferry(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([TestEnvironment.ferryBinary] + arguments)
    }

    /// New images for all three slot classes of the sandbox, and a bundle of them.
    func makeBundle(
        _ sandbox: Sandbox, version: String = "1.1.0", output: String, signer: String = "signer1",
        rootfs: [UInt8]? = nil, newKeyring: String? = nil
    ) throws -> [String: [UInt8]] {
        let images: [String: [UInt8]] = [
            "rootfs": rootfs ?? seededBytes(count: 5 << 20, seed: 1) + [UInt8](repeating: 0, count: 3 << 20),
            "modem": seededBytes(count: 2 << 20, seed: 2), "tee": seededBytes(count: 1 << 20, seed: 3),
        ]
        for (name, bytes) in images { try makeFile("\(sandbox.directory)/new-\(name).img", bytes: bytes) }
        var options = BundleWriter.Options.forTests(
            compatible: "ferry-demo-x86_64", version: SemanticVersion(version)!,
            images: images.keys.sorted().map {
                BundleWriter.Image(slotClass: $0, path: "\(sandbox.directory)/new-\($0).img")
            },
            signers: [
                BundleWriter.Signer(
                    certificate: "\(sandbox.directory)/pki/\(signer).pem", key: "\(sandbox.directory)/pki/\(signer).key"
                )
            ])
        options.chunkSize = 1 << 20
        options.newKeyring = newKeyring
        try BundleWriter.create(options, output: output, logger: quietLogger)
        return images
    }

    func slotBytes(_ sandbox: Sandbox, _ label: String, count: Int) throws -> [UInt8] {
        let partition = try PartitionTable.read(sandbox.diskPath).partition(
            .partitionLabel(label), disk: sandbox.diskPath)
        let device = try BlockDevice.openForReading(sandbox.diskPath, window: partition.range)
        return try device.read(at: 0, count: count)
    }

    func groupA(_ sandbox: Sandbox) throws -> [UInt8] {
        try slotBytes(sandbox, "rootfs_a", count: 16 << 20) + slotBytes(sandbox, "modem_a", count: 8 << 20)
            + slotBytes(sandbox, "tee_a", count: 4 << 20)
    }

    @Test func installBootConfirm() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let before = try groupA(sandbox)
            let images = try makeBundle(sandbox, output: "\(dir)/update.ferry")
            let result = try ferry(["install", "\(dir)/update.ferry", "--config", sandbox.configurationPath])
            #expect(result.status == 0, "\(result.output)")
            for (name, bytes) in images {
                #expect(try slotBytes(sandbox, "\(name)_b", count: bytes.count) == bytes, "\(name)_b")
            }
            #expect(try groupA(sandbox) == before)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
            let records = try StateStore(directory: try sandbox.configuration().stateDirectory).slotRecords()
            #expect(records["rootfs_b"]?.version == "1.1.0")
            #expect(records["rootfs_b"]?.sha256 == SHA256Hasher.hash(images["rootfs"]!).hex)
            // Boot it and confirm.
            let boot = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(boot.output.contains("booted group B"), "\(boot.output)")
            let status = try ferry(["status", "--config", sandbox.configurationPath]).output
            #expect(status.contains("Group B (booted, primary, good"))
            // Installing the same version again over A is fine; an older one is a downgrade.
            _ = try makeBundle(sandbox, version: "1.0.5", output: "\(dir)/older.ferry")
            #expect(try ferry(["install", "\(dir)/older.ferry", "--config", sandbox.configurationPath]).status == 45)
        }
    }

    @Test func keyringRotationThroughInstall() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let next = try TestPKI.make(in: "\(dir)/next", signers: ["newsigner"])
            _ = try makeBundle(sandbox, output: "\(dir)/rotate.ferry", newKeyring: next.keyring)
            let result = try ferry(["install", "\(dir)/rotate.ferry", "--config", sandbox.configurationPath])
            #expect(result.status == 0 && result.output.contains("adopted"), "\(result.output)")
            #expect(
                try ferry(["status", "--config", sandbox.configurationPath]).output.contains("(rotated by a bundle)"))
            // Boot B and confirm, then the old signers no longer count.
            _ = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            _ = try makeBundle(sandbox, version: "1.2.0", output: "\(dir)/old-signer.ferry", signer: "signer2")
            #expect(
                try ferry(["install", "\(dir)/old-signer.ferry", "--config", sandbox.configurationPath]).status == 43)
            try Shell.check(["cp", next.certificate("newsigner"), next.key("newsigner"), "\(sandbox.directory)/pki/"])
            _ = try makeBundle(sandbox, version: "1.2.0", output: "\(dir)/new-signer.ferry", signer: "newsigner")
            #expect(
                try ferry(["install", "\(dir)/new-signer.ferry", "--config", sandbox.configurationPath]).status == 0)
        }
    }

    @Test func failuresLeaveTheBootedGroupAndTheBootOrderAlone() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            let before = try groupA(sandbox)
            func environment() throws -> String { try ferry(["env", "list"] + config).output }

            // A payload byte flipped in the middle chunk: refused during the write, B marked bad.
            _ = try makeBundle(sandbox, output: "\(dir)/good.ferry")
            var bytes = try readFile("\(dir)/good.ferry")
            bytes[bytes.count - 3 << 20] ^= 0x10
            try makeFile("\(dir)/corrupt.ferry", bytes: bytes)
            let corrupt = try ferry(["install", "\(dir)/corrupt.ferry"] + config)
            #expect(corrupt.status == 41, "\(corrupt.output)")
            // Progress lines, then exactly one error line.
            let errorLines = corrupt.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error: ") }
            #expect(
                errorLines.count == 1 && corrupt.output.hasSuffix(String(errorLines[0]) + "\n"), "\(corrupt.output)")
            #expect(try groupA(sandbox) == before)
            let afterCorrupt = try environment()
            #expect(afterCorrupt.contains("BOOT_ORDER=A B") && afterCorrupt.contains("BOOT_B_LEFT=0"))
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)

            // A payload larger than its slot: refused before anything is written.
            _ = try makeBundle(
                sandbox, output: "\(dir)/big.ferry", rootfs: [UInt8](repeating: 7, count: (16 << 20) + 4096))
            #expect(try ferry(["install", "\(dir)/big.ferry"] + config).status == 24)
            #expect(try environment() == afterCorrupt)

            // A truncated bundle.
            try makeFile("\(dir)/short.ferry", bytes: Array(bytes.prefix(bytes.count / 2)))
            #expect(try ferry(["install", "\(dir)/short.ferry"] + config).status == 40)
            #expect(try groupA(sandbox) == before)

            // While the booted group is on trial, installing needs --force.
            #expect(try ferry(["install", "\(dir)/good.ferry"] + config).status == 0)
            _ = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory, "--fail"],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(try ferry(["install", "\(dir)/good.ferry"] + config).status == 84)
            #expect(try ferry(["install", "\(dir)/good.ferry", "--force"] + config).status == 0)
        }
    }

    /// Adds hooks to the sandbox's configuration.
    func setHooks(_ sandbox: Sandbox, _ hooks: String) throws {
        let text = try TextFile.read(sandbox.configurationPath)
            .replacing("\"signatureThreshold\": 1", with: "\"signatureThreshold\": 1, \"hooks\": {\(hooks)}")
        try DurableFile.write(text, to: sandbox.configurationPath)
    }

    func script(_ path: String, _ body: String) throws {
        try DurableFile.write("#!/bin/sh\n\(body)\n", to: path)
        try Shell.check(["chmod", "+x", path])
    }

    @Test func hooksSucceedFailAndTimeOut() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            _ = try makeBundle(sandbox, output: "\(dir)/update.ferry")
            try script("\(dir)/record.sh", "env | grep ^FERRY_ | sort > \(dir)/$FERRY_STAGE.env")
            try script("\(dir)/fail.sh", "exit 3")
            try script("\(dir)/hang.sh", "sleep 30")
            let groupABefore = try groupA(sandbox)
            let rootfsB = try slotBytes(sandbox, "rootfs_b", count: 1 << 20)

            // A failing pre-install hook: nothing written, nothing switched.
            try setHooks(sandbox, "\"preInstall\": \"\(dir)/fail.sh\"")
            #expect(try ferry(["install", "\(dir)/update.ferry"] + config).status == 85)
            #expect(try slotBytes(sandbox, "rootfs_b", count: 1 << 20) == rootfsB)
            #expect(try ferry(["env", "list"] + config).output.contains("BOOT_ORDER=A B"))

            // A pre-install hook that hangs is killed at the timeout.
            try DurableFile.write(
                try TextFile.read(sandbox.configurationPath).replacing(
                    "fail.sh", with: "hang.sh\", \"timeoutSeconds\": \"2"
                ).replacing("\"2\"", with: "2"), to: sandbox.configurationPath)
            let hung = try ferry(["install", "\(dir)/update.ferry"] + config)
            #expect(hung.status == 85 && hung.output.contains("timed out"), "\(hung.output)")

            // A failing post-install hook: written and verified, but never made primary; B stays bad.
            let fresh = try Sandbox.make(in: "\(dir)/fresh")
            _ = try makeBundle(fresh, output: "\(dir)/fresh.ferry")
            try setHooks(fresh, "\"preInstall\": \"\(dir)/record.sh\", \"postInstall\": \"\(dir)/fail.sh\"")
            let post = try ferry(["install", "\(dir)/fresh.ferry", "--config", fresh.configurationPath])
            #expect(post.status == 85, "\(post.output)")
            let environment = try ferry(["env", "list", "--config", fresh.configurationPath]).output
            #expect(environment.contains("BOOT_ORDER=A B") && environment.contains("BOOT_B_LEFT=0"))
            // The pre-install hook saw the install's details.
            let seen = try TextFile.read("\(dir)/pre-install.env")
            #expect(
                seen.contains("FERRY_TARGET_GROUP=B") && seen.contains("FERRY_VERSION=1.1.0")
                    && seen.contains("FERRY_SLOTS="))
            #expect(try groupA(sandbox) == groupABefore)

            // Hooks that succeed: installed and switched.
            let text = try TextFile.read(fresh.configurationPath).replacing(
                "\"postInstall\": \"\(dir)/fail.sh\"", with: "\"postInstall\": \"\(dir)/record.sh\"")
            try DurableFile.write(text, to: fresh.configurationPath)
            #expect(try ferry(["install", "\(dir)/fresh.ferry", "--config", fresh.configurationPath]).status == 0)
            #expect(try TextFile.read("\(dir)/post-install.env").contains("FERRY_STAGE=post-install"))
        }
    }

    @Test(arguments: ["json", "lines", "bar"])
    func progressModes(mode: String) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            _ = try makeBundle(sandbox, output: "\(dir)/update.ferry")
            let result = try ferry([
                "install", "\(dir)/update.ferry", "--progress", mode, "--config", sandbox.configurationPath,
            ])
            #expect(result.status == 0, "\(result.output)")
            let lines = result.output.split(separator: "\n").map(String.init)
            switch mode {
            case "json":
                let events = lines.filter { $0.hasPrefix("{") }
                #expect(events.count >= 8)
                for event in events {
                    let object = try JSONValue.parse(Array(event.utf8), what: "event", code: .internal).objectValue
                    #expect(
                        object?["stage"]?.stringValue != nil && object?["bytesDone"] != nil
                            && object?["bytesTotal"] != nil)
                }
                #expect(events.contains { $0.contains("\"stage\":\"read-back\"") && $0.contains("rootfs_b") })
                #expect(events.last?.contains("\"stage\":\"done\"") == true)
            case "lines":
                #expect(lines.contains("write rootfs_b: 100% (8.0 MiB of 8.0 MiB)"))
                #expect(lines.contains { $0.hasPrefix("read-back modem_b: 100%") })
                #expect(!result.output.contains("\r"))
            default:
                #expect(result.output.contains("\r[") && result.output.contains("] write rootfs_b"))
            }
        }
    }

    @Test func writeSlotRawXZAndZstd() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            let image = seededBytes(count: 3 << 20, seed: 9) + [UInt8](repeating: 0, count: 2 << 20)
            let other = [UInt8](repeating: 0, count: 1 << 20) + seededBytes(count: 4 << 20, seed: 11)
            try makeFile("\(dir)/image.img", bytes: image)
            try makeFile("\(dir)/other.img", bytes: other)
            try Shell.check(["sh", "-c", "xz -k -c \(dir)/image.img > \(dir)/image.img.xz"])
            try Shell.check(["zstd", "-q", "-f", "\(dir)/other.img", "-o", "\(dir)/other.img.zst"])
            // The zstd image goes into the slot the xz image filled, with different bytes.
            for (slot, file, bytes) in [
                ("rootfs_b", "image.img", image), ("modem_b", "image.img.xz", image),
                ("modem_b", "other.img.zst", other),
            ] {
                let result = try ferry(["write-slot", slot, "\(dir)/\(file)", "--progress", "lines"] + config)
                #expect(result.status == 0, "\(result.output)")
                #expect(try slotBytes(sandbox, slot, count: bytes.count) == bytes, "\(file)")
            }
            let records = try StateStore(directory: try sandbox.configuration().stateDirectory).slotRecords()
            #expect(records["modem_b"]?.sha256 == SHA256Hasher.hash(other).hex)
            #expect(records["modem_b"]?.source == "write-slot other.img.zst")
            #expect(try ferry(["env", "list"] + config).output.contains("BOOT_B_LEFT=0"))
            // Refused: the booted group, an unknown slot, an image larger than the slot.
            #expect(try ferry(["write-slot", "rootfs_a", "\(dir)/image.img"] + config).status == 22)
            #expect(try ferry(["write-slot", "rootfs_z", "\(dir)/image.img"] + config).status == 12)
            try makeFile("\(dir)/big.img", size: (4 << 20) + 512)
            #expect(try ferry(["write-slot", "tee_b", "\(dir)/big.img"] + config).status == 24)
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)
        }
    }
}
