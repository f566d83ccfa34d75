import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// `emmc-boot` on the simulated eMMC (no root, no MMC in this kernel): the image into the boot
/// partition not enabled, then one byte of EXT_CSD (PARTITION_CONFIG) switched; the refusals
/// that change nothing; device faults through the fault tests' seam (`Installer.wrapDevice`).
/// The crash simulation covers it in BootloaderCrashSimulationTests.
@Suite struct EMMCBootTests {
    typealias Install = BootloaderInstallTests

    static func partitionConfig(_ device: String) throws -> UInt8 {
        try readFile("\(device)/mmc.ext_csd")[EMMCBootArea.partitionConfigIndex]
    }

    static func holds(_ device: String, _ partition: Int, _ image: [UInt8]) throws -> Bool {
        Array(try readFile("\(device)/mmcboot\(partition)").prefix(image.count)) == image
    }

    @Test func theBootPartitionNotEnabledIsWrittenThenOneByteSwitchesAndTheNextUpdateGoesBack() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let old = seededBytes(count: 300 << 10, seed: 60)
            let new = seededBytes(count: 310 << 10, seed: 61)
            let device = try Install.device(dir, strategy: "emmc-boot", old: old, pki: pki)
            let registerBefore = try readFile("\(device)/mmc.ext_csd")
            let result = try Install.install(
                device, try Install.bundle(dir, pki: pki, image: new, strategy: "emmc-boot"))
            #expect(result.bootloaders == ["bootloader (emmc-boot)"])
            // boot1 holds the new image; boot0 the old, untouched; PARTITION_CONFIG enables boot1
            // with BOOT_ACK kept; no other byte of the register changed.
            #expect(try Self.holds(device, 1, new) && Self.holds(device, 0, old))
            #expect(try Self.partitionConfig(device) == 0x50)
            let registerAfter = try readFile("\(device)/mmc.ext_csd")
            #expect((0..<512).filter { registerBefore[$0] != registerAfter[$0] } == [EMMCBootArea.partitionConfigIndex])
            // The record and the status.
            let record = try #require(try StateStore(directory: "\(device)/state").slotRecords()["bootloader"])
            #expect(record.activeRegion == 1 && record.sha256 == SHA256Hasher.hash(new).hex)
            let status = try StatusReport.gather(
                configuration: try SystemConfiguration.load("\(device)/system.json"),
                commandLine: KernelCommandLine(""),
                mounts: MountTable(mounts: []))
            let slot = try #require(status.singleCopySlots.first { $0.name == "bootloader" })
            #expect(slot.strategy == "emmc-boot" && slot.activeRegion == 2 && slot.strategyError == nil)
            // The next update goes back into boot0.
            let third = seededBytes(count: 200 << 10, seed: 62)
            _ = try Install.install(
                device, try Install.bundle(dir, pki: pki, image: third, strategy: "emmc-boot", name: "third.ferry"))
            #expect(try Self.holds(device, 0, third) && Self.holds(device, 1, new))
            #expect(try Self.partitionConfig(device) == 0x48)
        }
    }

    @Test(arguments: [
        "the user area enabled", "larger than a boot partition", "EXT_CSD changed since it was recorded",
        "no boot partitions", "a bundle for another strategy",
    ])
    func aRefusalKnownBeforeWritingChangesNothing(_ what: String) async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Install.device(
                dir, strategy: "emmc-boot", old: seededBytes(count: 4096, seed: 60), pki: pki)
            var bundle = try Install.bundle(
                dir, pki: pki, image: seededBytes(count: 8192, seed: 61), strategy: "emmc-boot")
            let expected: FerryError.Code
            let says: String
            switch what {
            case "the user area enabled":
                var register = try readFile("\(device)/mmc.ext_csd")
                register[EMMCBootArea.partitionConfigIndex] = 0x78
                try makeFile("\(device)/mmc.ext_csd", bytes: register)
                (expected, says) = (
                    .bootloaderForeign, "BOOT_PARTITION_ENABLE 7 (the user area) is neither boot partition"
                )
            case "larger than a boot partition":
                bundle = try Install.bundle(
                    dir, pki: pki, image: seededBytes(count: (1 << 20) + 512, seed: 61), strategy: "emmc-boot",
                    name: "large.ferry")
                (expected, says) = (.deviceTooSmall, "larger than the 1048576-byte boot partitions")
            case "EXT_CSD changed since it was recorded":
                // Recorded after an update that enabled boot1; someone enabled boot0 since.
                try StateStore(directory: "\(device)/state").setSlotRecord(
                    InstalledSlotRecord(raw: ["selectors": .array([.string(SHA256Hasher.hash([0x50]).hex)])]),
                    for: "bootloader")
                (expected, says) = (
                    .bootloaderForeign, "the EXT_CSD PARTITION_CONFIG changed since Ferry last wrote it"
                )
            case "no boot partitions":
                try FileSystem.remove("\(device)/mmcboot1")
                (expected, says) = (.deviceNotFound, "has no boot partition")
            default:
                bundle = try Install.bundle(
                    dir, pki: pki, image: seededBytes(count: 8192, seed: 61), strategy: "gpt-switch", name: "gpt.ferry")
                (expected, says) = (.notCompatible, "is made for gpt-switch")
            }
            let before = try Install.snapshot(device)
            let error = #expect(throws: FerryError.self) { try Install.install(device, bundle) }
            #expect(error?.code == expected, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            #expect(error?.message.contains(says) == true, "\(error?.message ?? "")")
            let after = try Install.snapshot(device)
            #expect(after.keys.sorted() == before.keys.sorted())
            for (name, bytes) in before where after[name] != bytes { Issue.record("\(what): \(name) changed") }
        }
    }

    /// A failing eMMC: one clean error, boot0 still enabled, and a healthy device finishes.
    @Test(arguments: ["a switch the device ignores", "EIO writing the boot partition", "EIO on the switch"])
    func aDeviceFaultLeavesTheOldBootPartitionEnabled(_ fault: String) async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let old = seededBytes(count: 64 << 10, seed: 60)
            let new = seededBytes(count: 64 << 10, seed: 61)
            let device = try Install.device(dir, strategy: "emmc-boot", old: old, pki: pki)
            let bundle = try Install.bundle(dir, pki: pki, image: new, strategy: "emmc-boot")
            let expected: FerryError.Code = fault.hasPrefix("a switch") ? .readBackMismatch : .io
            let error = #expect(throws: FerryError.self) {
                try Install.install(device, bundle) { target in
                    switch fault {
                    case "a switch the device ignores" where target.path.hasSuffix("mmc.ext_csd"):
                        return IgnoresWrites(target)
                    case "EIO writing the boot partition" where target.path.hasSuffix("mmcboot1"):
                        return FaultyBlockTarget(target, failAfterBytes: 4096)
                    case "EIO on the switch" where target.path.hasSuffix("mmc.ext_csd"):
                        return FaultyBlockTarget(target, failAfterBytes: 0)
                    default:
                        return target
                    }
                }
            }
            #expect(error?.code == expected, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            #expect(try Self.partitionConfig(device) == 0x48, "boot0 stays enabled")
            #expect(try Self.holds(device, 0, old))
            _ = try Install.install(device, bundle)
            #expect(try Self.partitionConfig(device) == 0x50)
            #expect(try Self.holds(device, 1, new))
        }
    }

    @Test func partitionConfigValues() {
        #expect(EMMCBootArea.bootPartition(enabledBy: 0x48) == 0)
        #expect(EMMCBootArea.bootPartition(enabledBy: 0x10) == 1)
        #expect(EMMCBootArea.bootPartition(enabledBy: 0x38) == nil)  // user area
        #expect(EMMCBootArea.bootPartition(enabledBy: 0x00) == nil)  // not enabled
        // BOOT_ACK kept, access bits cleared, enable set.
        #expect(EMMCBootArea.partitionConfig(0x49, enabling: 1) == 0x50)
        #expect(EMMCBootArea.partitionConfig(0x12, enabling: 0) == 0x08)
        // The ioctl as <linux/mmc/ioctl.h> defines it: _IOWR(179, 0, struct mmc_ioc_cmd), 72 bytes.
        #expect(EMMCBootArea.commandLayout.request == 0xC048_B300)
        #expect(EMMCBootArea.commandLayout.size == 72)
    }
}

/// A register that accepts every command and changes nothing (an eMMC whose CMD6 has no effect).
final class IgnoresWrites: BlockTarget {
    let base: BlockDevice
    init(_ base: BlockDevice) { self.base = base }
    var byteCount: Int64 { base.byteCount }
    var logicalSectorSize: Int { base.logicalSectorSize }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        try base.read(into: buffer, at: offset)
    }
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {}
    func synchronize() throws(FerryError) { try base.synchronize() }
    func zeroOut(_ range: Range<Int64>) throws(FerryError) {}
}
