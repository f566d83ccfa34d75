import FerryBundle
import FerryCore
import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// ARCHITECTURE.md invariant 11: a refusal that can be known before writing changes nothing at
/// all. Each refusal of each command that writes slots (`install`, `write-slot`) is run, and the
/// boot environment (the whole boot partition, byte for byte), the state directory (every file)
/// and the slots are compared before and after.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct RefusalsChangeNothingTests {
    /// Everything a refusal could change: the boot partition (the U-Boot environment), each file
    /// of the state directory (the lock file aside: taking the lock is not a change), each slot.
    static func snapshot(_ sandbox: Sandbox) throws -> [String: SHA256Digest] {
        var parts: [String: SHA256Digest] = [:]
        let table = try PartitionTable.read(sandbox.diskPath)
        for label in ["boot", "rootfs_a", "rootfs_b", "modem_a", "modem_b", "tee_a", "tee_b"] {
            let partition = try table.partition(.partitionLabel(label), disk: sandbox.diskPath)
            parts["partition \(label)"] = try SHA256Hasher.hash(
                BlockDevice.openForReading(sandbox.diskPath, window: partition.range))
        }
        let state = "\(sandbox.directory)/state"
        for entry in FileSystem.entries(state) where entry != "lock" {
            parts["state/\(entry)"] = SHA256Hasher.hash(try readFile("\(state)/\(entry)"))
        }
        return parts
    }

    struct Case {
        var what: String
        var arguments: [String]
        var code: FerryError.Code
    }

    /// Runs `ferry <arguments>`, expecting the refusal `code` with one error line and no change.
    static func expectNothingChanged(
        _ sandbox: Sandbox, _ refusal: Case, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let before = try snapshot(sandbox)
        let result = try Shell.run(
            [TestEnvironment.ferryBinary] + refusal.arguments + ["--config", sandbox.configurationPath])
        #expect(
            result.status == refusal.code.exitStatus, "\(refusal.what): \(result.output)",
            sourceLocation: sourceLocation)
        let errors = result.output.split(separator: "\n").filter { $0.hasPrefix("ferry: error: ") }
        #expect(errors.count == 1, "\(refusal.what): \(result.output)", sourceLocation: sourceLocation)
        let after = try snapshot(sandbox)
        for key in Set(before.keys).union(after.keys).sorted() where before[key] != after[key] {
            Issue.record("\(refusal.what): \(key) changed", sourceLocation: sourceLocation)
        }
    }

    @Test func everyRefusalOfEveryWritingCommandChangesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let configuration = try sandbox.configuration()
            try sandbox.makeUpdate(
                [("rootfs", 6 << 20), ("modem", 2 << 20), ("tee", 1 << 20)], output: "\(dir)/update.ferry", seed: 7)
            try makeFile("\(dir)/small.img", bytes: seededBytes(count: 1 << 20, seed: 8))
            try makeFile("\(dir)/large.img", bytes: seededBytes(count: 17 << 20, seed: 9))
            try makeFile("\(dir)/not-xz.img.xz", bytes: Array("this is not an xz stream".utf8))
            try makeFile("\(dir)/not-zstd.img.zst", bytes: Array("this is not a zstd frame".utf8))
            // A zstd frame of unknown size made with --long=28 declares a 256 MiB window: over the bound.
            try Shell.check(["sh", "-c", "zstd -q --long=28 -c < \(dir)/small.img > \(dir)/wide.img.zst"])
            try makeFile("\(dir)/empty.img", bytes: [])
            try sandbox.makeUpdate([("rootfs", 20 << 20)], output: "\(dir)/too-large.ferry", seed: 10)

            // Refusals that need nothing held or mounted.
            for refusal in [
                Case(
                    what: "write-slot into the booted group",
                    arguments: ["write-slot", "rootfs_a", "\(dir)/small.img"], code: .deviceBooted),
                Case(
                    what: "write-slot of an image larger than the slot",
                    arguments: ["write-slot", "tee_b", "\(dir)/large.img"], code: .deviceTooSmall),
                Case(
                    what: "write-slot of a file that is not xz",
                    arguments: ["write-slot", "tee_b", "\(dir)/not-xz.img.xz"], code: .bundleInvalid),
                Case(
                    what: "write-slot of a file that is not zstd",
                    arguments: ["write-slot", "tee_b", "\(dir)/not-zstd.img.zst"], code: .bundleInvalid),
                Case(
                    what: "write-slot of a zstd image whose window is over the memory bound",
                    arguments: ["write-slot", "tee_b", "\(dir)/wide.img.zst"], code: .limitExceeded),
                Case(
                    what: "write-slot of an empty image", arguments: ["write-slot", "tee_b", "\(dir)/empty.img"],
                    code: .bundleInvalid),
                Case(
                    what: "write-slot of a slot that does not exist",
                    arguments: ["write-slot", "rootfs_c", "\(dir)/small.img"], code: .unknownSlot),
                Case(
                    what: "install of a payload larger than its slot",
                    arguments: ["install", "\(dir)/too-large.ferry"], code: .deviceTooSmall),
            ] {
                try Self.expectNothingChanged(sandbox, refusal)
            }

            // Held by another writer: the slot is open exclusively (through the same loop device).
            var resolver = SlotResolver()
            let booted = try BootedGroup.detect(
                configuration: configuration, slots: try resolver.resolveAll(configuration),
                commandLine: KernelCommandLine(""),
                mounts: MountTable.current())
            let access = SlotAccess(
                configuration: configuration, booted: booted, mounts: try MountTable.current(), logger: quietLogger)
            do {
                let held = try access.openForWriting(try #require(configuration.slot(named: "rootfs_b")))
                defer { try? held.close() }
                try Self.expectNothingChanged(
                    sandbox,
                    Case(
                        what: "write-slot into a slot held by another writer",
                        arguments: ["write-slot", "rootfs_b", "\(dir)/small.img"], code: .deviceInUse))
                try Self.expectNothingChanged(
                    sandbox,
                    Case(
                        what: "install into a group whose slot another writer holds",
                        arguments: ["install", "\(dir)/update.ferry"], code: .deviceInUse))
            }

            // Mounted: the inactive rootfs is mounted (as a maintenance shell might leave it).
            try await sandbox.withMountedPartition("rootfs_b", at: "\(dir)/mnt") { _ in
                try Self.expectNothingChanged(
                    sandbox,
                    Case(
                        what: "write-slot into a mounted slot",
                        arguments: ["write-slot", "rootfs_b", "\(dir)/small.img"], code: .deviceInUse))
                try Self.expectNothingChanged(
                    sandbox,
                    Case(
                        what: "install into a group with a mounted slot",
                        arguments: ["install", "\(dir)/update.ferry"], code: .deviceInUse))
            }

            // The booted group unknown: nothing may be written anywhere.
            try Shell.check(["mv", "\(sandbox.directory)/state/booted", "\(dir)/booted"])
            try Self.expectNothingChanged(
                sandbox,
                Case(
                    what: "install with the booted group unknown", arguments: ["install", "\(dir)/update.ferry"],
                    code: .deviceBooted))
            try Self.expectNothingChanged(
                sandbox,
                Case(
                    what: "write-slot with the booted group unknown",
                    arguments: ["write-slot", "tee_b", "\(dir)/small.img"], code: .deviceBooted))
            try Shell.check(["mv", "\(dir)/booted", "\(sandbox.directory)/state/booted"])
            #expect(LoopDevice.devices(backing: sandbox.diskPath).isEmpty)

            // And the same commands succeed once nothing stands in the way.
            #expect(
                try Shell.run([
                    TestEnvironment.ferryBinary, "install", "\(dir)/update.ferry", "--config",
                    sandbox.configurationPath,
                ]).status == 0)
        }
    }
}
