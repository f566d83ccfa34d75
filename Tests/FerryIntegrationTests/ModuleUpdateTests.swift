import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Module-only bundles (a modem image alone): the other members of the target group are made
/// consistent with the booted group — copied from it and checked against the recorded image, or
/// left alone when they already hold it — so that the group that boots next is whole.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct ModuleUpdateTests {
    func ferry(_ sandbox: Sandbox, _ arguments: [String]) throws -> Shell.Result {
        try Shell.run([TestEnvironment.ferryBinary] + arguments + ["--config", sandbox.configurationPath])
    }

    func slot(_ sandbox: Sandbox, _ label: String, _ count: Int) throws -> [UInt8] {
        let partition = try PartitionTable.read(sandbox.diskPath).partition(
            .partitionLabel(label), disk: sandbox.diskPath)
        return try BlockDevice.openForReading(sandbox.diskPath, window: partition.range).read(at: 0, count: count)
    }

    func moduleBundle(_ sandbox: Sandbox, slotClass: String, bytes: [UInt8], version: String, output: String) throws {
        try makeFile("\(sandbox.directory)/\(slotClass)-\(version).img", bytes: bytes)
        var options = BundleWriter.Options.forTests(
            compatible: "ferry-demo-x86_64", version: SemanticVersion(version)!,
            images: [
                BundleWriter.Image(slotClass: slotClass, path: "\(sandbox.directory)/\(slotClass)-\(version).img")
            ],
            signers: [
                BundleWriter.Signer(
                    certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key")
            ])
        options.chunkSize = 1 << 20
        try BundleWriter.create(options, output: output, logger: quietLogger)
    }

    @Test func aModemOnlyBundleLeavesTheNewGroupConsistent() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let store = StateStore(directory: try sandbox.configuration().stateDirectory)
            let factory = try store.slotRecords()
            let modem = seededBytes(count: 3 << 20, seed: 55)
            try moduleBundle(sandbox, slotClass: "modem", bytes: modem, version: "1.0.1", output: "\(dir)/modem.ferry")
            let result = try ferry(sandbox, ["install", "\(dir)/modem.ferry", "--progress", "lines"])
            #expect(result.status == 0, "\(result.output)")
            #expect(
                result.output.contains(
                    "Installed 1.0.1 into group B (modem_b); rootfs_b, tee_b made consistent with the booted group"),
                "\(result.output)")
            // Every member of B holds what its record says: the new modem, and A's rootfs and TEE images.
            #expect(try slot(sandbox, "modem_b", modem.count) == modem)
            let records = try store.slotRecords()
            for (b, a) in [("rootfs_b", "rootfs_a"), ("tee_b", "tee_a")] {
                let size = try #require(factory[a]?.size)
                #expect(records[b]?.sha256 == factory[a]?.sha256, "\(b)")
                #expect(SHA256Hasher.hash(try slot(sandbox, b, Int(size))).hex == factory[a]?.sha256, "\(b)")
                #expect(records[b]?.source == "copied from \(a)")
            }
            #expect(records["modem_b"]?.sha256 == SHA256Hasher.hash(modem).hex)
            let boot = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(boot.output.contains("booted group B"), "\(boot.output)")

            // Now from B into A: A's rootfs already holds B's image (not written again), its modem does not.
            let tee = seededBytes(count: 1 << 20, seed: 56)
            try moduleBundle(sandbox, slotClass: "tee", bytes: tee, version: "1.0.2", output: "\(dir)/tee.ferry")
            let second = try ferry(sandbox, ["install", "\(dir)/tee.ferry", "--progress", "lines"])
            #expect(second.status == 0, "\(second.output)")
            #expect(!second.output.contains("write rootfs_a"), "\(second.output)")
            #expect(second.output.contains("write modem_a"), "\(second.output)")
            #expect(try slot(sandbox, "modem_a", modem.count) == modem)
            #expect(try slot(sandbox, "tee_a", tee.count) == tee)
        }
    }

    @Test func aBootedMemberThatNoLongerMatchesItsRecordIsNotCopied() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try moduleBundle(
                sandbox, slotClass: "modem", bytes: seededBytes(count: 1 << 20, seed: 57), version: "1.0.1",
                output: "\(dir)/modem.ferry")
            // tee_a differs from its recorded image.
            let partition = try PartitionTable.read(sandbox.diskPath).partition(
                .partitionLabel("tee_a"), disk: sandbox.diskPath)
            let disk = try BlockDevice.openExclusive(sandbox.diskPath)
            var byte = try disk.read(at: partition.range.lowerBound + 100, count: 1)
            byte[0] ^= 0xFF
            try disk.write(byte, at: partition.range.lowerBound + 100)
            try disk.close()
            let result = try ferry(sandbox, ["install", "\(dir)/modem.ferry"])
            #expect(result.status == FerryError.Code.sourceMismatch.exitStatus, "\(result.output)")
            #expect(
                result.output.contains("booted slot 'tee_a' no longer holds the image recorded for it"),
                "\(result.output)")
            let environment = try ferry(sandbox, ["env", "list"]).output
            #expect(environment.contains("BOOT_ORDER=A B") && environment.contains("BOOT_B_LEFT=0"))
        }
    }

    @Test func aPayloadForASlotClassTheDeviceLacksIsRefused() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try moduleBundle(
                sandbox, slotClass: "bootloader", bytes: seededBytes(count: 1 << 20, seed: 58), version: "1.0.1",
                output: "\(dir)/bl.ferry")
            let before = try ferry(sandbox, ["env", "list"]).output
            let result = try ferry(sandbox, ["install", "\(dir)/bl.ferry"])
            #expect(result.status == FerryError.Code.notCompatible.exitStatus, "\(result.output)")
            #expect(
                result.output.contains("slot class 'bootloader', which this device does not have"), "\(result.output)")
            #expect(try ferry(sandbox, ["env", "list"]).output == before)
        }
    }

    /// Makes the sandbox's TEE single-copy: `tee_a` becomes the one `tee` slot, `tee_b` is dropped.
    func makeTEESingleCopy(_ sandbox: Sandbox, writeInPlace: Bool) throws {
        var root =
            try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
            .objectValue ?? [:]
        var slots = root["slots"]?.objectValue ?? [:]
        var tee = (slots["tee_a"] ?? slots["tee"])?.objectValue ?? [:]
        tee["bootname"] = nil
        tee["singleCopy"] = .bool(true)
        if writeInPlace { tee["writeInPlace"] = .bool(true) }
        slots["tee_a"] = nil
        slots["tee_b"] = nil
        slots["tee"] = .object(tee)
        root["slots"] = .object(slots)
        try DurableFile.write(
            String(decoding: JSONValue.object(root).serialized(), as: UTF8.self), to: sandbox.configurationPath)
    }

    @Test func aSingleCopyModuleIsWrittenInPlaceOnlyWithTheOptIn() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try makeTEESingleCopy(sandbox, writeInPlace: false)
            let environment = try ferry(sandbox, ["env", "list"]).output
            let before = try slot(sandbox, "tee_a", 1 << 20)
            let tee = seededBytes(count: 1 << 20, seed: 58)
            try moduleBundle(sandbox, slotClass: "tee", bytes: tee, version: "1.0.3", output: "\(dir)/tee.ferry")
            // Without the opt-in: refused before anything is written.
            let refused = try ferry(sandbox, ["install", "\(dir)/tee.ferry"])
            #expect(refused.status == 22, "\(refused.output)")
            #expect(
                refused.output.contains(
                    "single-copy (no A/B) and is written in place only with \"writeInPlace\": true"),
                "\(refused.output)")
            #expect(try slot(sandbox, "tee_a", 1 << 20) == before)
            #expect(try ferry(sandbox, ["env", "list"]).output == environment)

            // With it: written in place, read back, recorded; no group switch.
            try makeTEESingleCopy(sandbox, writeInPlace: true)
            let installed = try ferry(sandbox, ["install", "\(dir)/tee.ferry"])
            #expect(installed.status == 0, "\(installed.output)")
            #expect(
                installed.output.contains("Installed 1.0.3 in place into single-copy tee; no group switch."),
                "\(installed.output)")
            #expect(try slot(sandbox, "tee_a", tee.count) == tee)
            #expect(try ferry(sandbox, ["env", "list"]).output == environment)
            let records = try StateStore(directory: try sandbox.configuration().stateDirectory).slotRecords()
            #expect(records["tee"]?.sha256 == SHA256Hasher.hash(tee).hex)
            let status = try ferry(sandbox, ["status"]).output
            #expect(status.contains("Single-copy slots (no A/B)") && status.contains("single-copy  1.0.3"), "\(status)")

            // Beside A/B members it is written too, and the group switches.
            let tee2 = seededBytes(count: 1 << 20, seed: 59)
            try makeFile("\(dir)/tee2.img", bytes: tee2)
            try makeFile("\(dir)/modem2.img", bytes: seededBytes(count: 1 << 20, seed: 60))
            var options = BundleWriter.Options.forTests(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.0.4")!,
                images: [
                    BundleWriter.Image(slotClass: "modem", path: "\(dir)/modem2.img"),
                    BundleWriter.Image(slotClass: "tee", path: "\(dir)/tee2.img"),
                ],
                signers: [
                    BundleWriter.Signer(
                        certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key"
                    )
                ])
            options.chunkSize = 1 << 20
            try BundleWriter.create(options, output: "\(dir)/both.ferry", logger: quietLogger)
            let both = try ferry(sandbox, ["install", "\(dir)/both.ferry"])
            #expect(both.status == 0 && both.output.contains("into group B (modem_b, tee)"), "\(both.output)")
            #expect(try slot(sandbox, "tee_a", tee2.count) == tee2)
        }
    }
}
