import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Bootloader payloads installed on a device of image files (no root): a GRUB i386-pc core.img
/// with `mbr-switch` and an ESP image with `gpt-switch`, each with a rootfs, through the installer;
/// what the slot record says afterwards; and the refusals that change nothing.
@Suite struct BootloaderInstallTests {
    typealias Device = CrashSimulationTests

    static let grubRegions = [
        BootRegion(offset: 64 * 512, size: 960 * 512), BootRegion(offset: 1024 * 512, size: 960 * 512),
    ]
    static let espRegions = [
        BootRegion(offset: 2048 * 512, size: 2048 * 512), BootRegion(offset: 4096 * 512, size: 2048 * 512),
    ]

    static var hasGRUB: Bool { TextFile.exists("/usr/lib/grub/i386-pc/boot.img") }

    /// A device (CrashSimulationTests' image files) plus `boot-disk.img`, an 8 MiB GPT disk whose
    /// bootloader slot is updated with `strategy`; region 1 holds `old`.
    static func device(_ dir: String, strategy: String, old: [UInt8], pki: TestPKI) throws -> String {
        let device = "\(dir)/device"
        try Device.makeDevice(device, bootloader: "uboot", pki: pki)
        if strategy == "emmc-boot" { return try emmcDevice(device, old: old) }
        let disk = "\(device)/boot-disk.img"
        try makeFile(disk, size: 8 << 20)
        _ = try Shell.check([
            "sh", "-c",
            "printf 'label: gpt\\nfirst-lba: 34\\nstart=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\\nstart=8192, size=4096, name=\"data\"\\n' | sfdisk -q --no-reread --no-tell-kernel \"$0\"",
            disk,
        ])
        let handle = try BlockDevice.openSharedForWriting(disk)
        defer { try? handle.close() }
        let update: String
        if strategy == "mbr-switch" {
            var sector = MBRSector(try handle.read(at: 0, count: 512))
            let bootImage = try readFile("/usr/lib/grub/i386-pc/boot.img")
            sector.bytes.replaceSubrange(0..<440, with: bootImage[0..<440])
            sector.grubKernelSector = grubRegions[0].firstSector
            try handle.write(sector.bytes, at: 0)
            try handle.write(
                try GRUBCoreImage.patched(old, toRunAt: grubRegions[0].firstSector), at: grubRegions[0].offset)
            update =
                #"{ "strategy": "mbr-switch", "pointer": "grub-core", "regions": [{ "offset": 32768, "size": 491520 }, { "offset": 524288, "size": 491520 }] }"#
        } else {
            try handle.write(old, at: espRegions[0].offset)
            update =
                #"{ "strategy": "gpt-switch", "partition": 1, "regions": [{ "offset": 1048576, "size": 1048576 }, { "offset": 2097152, "size": 1048576 }] }"#
        }
        try handle.synchronize()
        try addBootloaderSlot(device, disk: "boot-disk.img", update: update)
        return device
    }

    static func addBootloaderSlot(_ device: String, disk: String, update: String) throws {
        var text = String(decoding: try readFile("\(device)/system.json"), as: UTF8.self)
        text = text.replacing(
            #""modem_b": { "class": "modem", "bootname": "B", "device": "modem_b.img" } }"#,
            with:
                #""modem_b": { "class": "modem", "bootname": "B", "device": "modem_b.img" },"#
                + #" "bootloader": { "class": "bootloader", "singleCopy": true, "device": "\#(disk)", "update": \#(update) } }"#
        )
        try DurableFile.write(text, to: "\(device)/system.json")
    }

    /// The simulated eMMC (`EMMCBootArea`): the user area `mmc` (2 MiB), boot partitions
    /// `mmcboot0` and `mmcboot1` (1 MiB each), and `mmc.ext_csd` with PARTITION_CONFIG 0x48
    /// (BOOT_ACK, boot0 enabled); boot0 holds `old`.
    static let emmcFiles = ["mmc", "mmcboot0", "mmcboot1", "mmc.ext_csd"]
    static func emmcDevice(_ device: String, old: [UInt8]) throws -> String {
        try makeFile("\(device)/mmc", size: 2 << 20)
        try makeFile("\(device)/mmcboot0", size: 1 << 20)
        try makeFile("\(device)/mmcboot1", size: 1 << 20)
        var register = [UInt8](repeating: 0, count: 512)
        register[EMMCBootArea.partitionConfigIndex] = 0x48
        register[192] = 8  // EXT_CSD_REV: 1.8 (eMMC 5.1); not read by Ferry
        try makeFile("\(device)/mmc.ext_csd", bytes: register)
        let boot0 = try BlockDevice.openSharedForWriting("\(device)/mmcboot0")
        try boot0.write(old, at: 0)
        try boot0.synchronize()
        try boot0.close()
        try addBootloaderSlot(device, disk: "mmc", update: #"{ "strategy": "emmc-boot" }"#)
        return device
    }

    /// A bundle with the bootloader `image` (and a rootfs unless `bootloaderOnly`).
    static func bundle(
        _ dir: String, pki: TestPKI, image: [UInt8], strategy: String, groups: [String] = ["A", "B"],
        bootloaderOnly: Bool = false, name: String = "update.ferry"
    ) throws -> String {
        try makeFile("\(dir)/bootloader.bin", bytes: image)
        try makeFile("\(dir)/rootfs.img", bytes: seededBytes(count: Device.rootfsSize, seed: 31))
        var images = [
            BundleWriter.Image(
                slotClass: "bootloader", path: "\(dir)/bootloader.bin",
                bootloader: Manifest.BootloaderInfo(strategy: strategy, bootsGroups: groups))
        ]
        if !bootloaderOnly { images.append(BundleWriter.Image(slotClass: "rootfs", path: "\(dir)/rootfs.img")) }
        var options = BundleWriter.Options(
            compatible: "ferry-demo-x86_64", version: SemanticVersion("1.1.0")!, images: images,
            signers: [BundleWriter.Signer(certificate: pki.certificate("signer1"), key: pki.key("signer1"))])
        options.chunkSize = 64 << 10
        options.preset = 0
        let path = "\(dir)/\(name)"
        try BundleWriter.create(options, output: path, logger: quietLogger)
        return path
    }

    static func install(
        _ device: String, _ bundle: String, wrap: ((BlockDevice) -> any BlockTarget)? = nil
    ) throws(FerryError) -> Installer.Result {
        let configuration: SystemConfiguration
        do { configuration = try SystemConfiguration.load("\(device)/system.json") } catch { throw error }
        let store = StateStore(directory: configuration.stateDirectory)
        let lock = try store.acquireWriteLock(command: "test")
        defer { lock.release() }
        var installer = Installer(
            configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"), logger: quietLogger)
        if let wrap { installer.wrapDevice = wrap }
        return try installer.install(
            from: try FileByteSource(path: bundle), bundleName: "update.ferry", allowDowngrade: false, force: false)
    }

    static func coreImage(_ dir: String, _ marker: String) throws -> [UInt8] {
        let path = "\(dir)/core-\(marker).img"
        _ = try Shell.check([
            "grub-mkimage", "-O", "i386-pc", "-o", path, "-p", "(hd0,gpt2)/\(marker)", "biosdisk", "part_gpt",
        ])
        return try readFile(path)
    }

    static func selection(_ device: String, _ strategy: BootloaderStrategy) throws -> BootloaderUpdater.Selection {
        let disk = try BlockDevice.openForReading("\(device)/boot-disk.img")
        defer { try? disk.close() }
        return try BootloaderUpdater(strategy: strategy, disk: disk, name: "bootloader").selection()
    }

    @Test(.enabled(if: hasGRUB, "needs grub-pc-bin"))
    func aGRUBCoreIsSwitchedBeforeTheGroupAndRecorded() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Self.device(dir, strategy: "mbr-switch", old: try Self.coreImage(dir, "old"), pki: pki)
            let new = try Self.coreImage(dir, "new")
            let result = try Self.install(device, try Self.bundle(dir, pki: pki, image: new, strategy: "mbr-switch"))
            #expect(result.target == "B")
            let strategy = BootloaderStrategy.mbrSwitch(regions: Self.grubRegions, pointer: .grubCore)
            let selection = try Self.selection(device, strategy)
            #expect(selection.active == 1)
            let record = try #require(try StateStore(directory: "\(device)/state").slotRecords()["bootloader"])
            #expect(record.sha256 == SHA256Hasher.hash(new).hex && record.activeRegion == 1)
            #expect(record.selectors == [selection.selectorDigest])
            // The status names the strategy and the selected region.
            let configuration = try SystemConfiguration.load("\(device)/system.json")
            let status = try StatusReport.gather(
                configuration: configuration, commandLine: KernelCommandLine(""), mounts: MountTable(mounts: []))
            let slot = try #require(status.singleCopySlots.first { $0.name == "bootloader" })
            #expect(slot.strategy == "mbr-switch" && slot.activeRegion == 2)
        }
    }

    @Test func anESPIsMovedBackupTableFirstAndTheNextUpdateGoesBack() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Self.device(
                dir, strategy: "gpt-switch", old: seededBytes(count: 1 << 20, seed: 40), pki: pki)
            let strategy = BootloaderStrategy.gptSwitch(regions: Self.espRegions, partition: 1)
            let first = seededBytes(count: 1 << 20, seed: 41)
            _ = try Self.install(
                device, try Self.bundle(dir, pki: pki, image: first, strategy: "gpt-switch", bootloaderOnly: true))
            #expect(try Self.selection(device, strategy).active == 1)
            let second = seededBytes(count: 512 << 10, seed: 42)
            _ = try Self.install(
                device,
                try Self.bundle(
                    dir, pki: pki, image: second, strategy: "gpt-switch", bootloaderOnly: true, name: "second.ferry"))
            #expect(try Self.selection(device, strategy).active == 0)
            let disk = try BlockDevice.openForReading("\(device)/boot-disk.img")
            defer { try? disk.close() }
            #expect(try disk.read(at: Self.espRegions[0].offset, count: second.count) == second)
            let copies = try GPT.read(disk)
            #expect(try copies.primary.get().isCopy(of: try copies.backup.get()))
        }
    }

    /// Every file of the device, the state directory included (the lock excepted).
    static func snapshot(_ device: String) throws -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        for name in FileSystem.entries(device) where name != "state" { files[name] = try readFile("\(device)/\(name)") }
        for name in FileSystem.entries("\(device)/state") where name != "lock" {
            files["state/\(name)"] = try readFile("\(device)/state/\(name)")
        }
        return files
    }

    @Test(arguments: [
        "another strategy", "one group only", "a foreign MBR", "an MBR changed since it was recorded",
        "a damaged backup GPT",
    ])
    func aRefusalKnownBeforeWritingChangesNothing(_ what: String) async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let gpt = what == "a damaged backup GPT" || !Self.hasGRUB
            let strategy = gpt ? "gpt-switch" : "mbr-switch"
            let old = gpt ? seededBytes(count: 1 << 20, seed: 40) : try Self.coreImage(dir, "old")
            let new = gpt ? seededBytes(count: 1 << 20, seed: 41) : try Self.coreImage(dir, "new")
            let device = try Self.device(dir, strategy: strategy, old: old, pki: pki)
            var bundle = try Self.bundle(dir, pki: pki, image: new, strategy: strategy)
            let disk = try BlockDevice.openSharedForWriting("\(device)/boot-disk.img")
            defer { try? disk.close() }
            let expected: FerryError.Code
            switch what {
            case "another strategy":
                bundle = try Self.bundle(dir, pki: pki, image: new, strategy: "raw-fallback", name: "other.ferry")
                expected = .notCompatible
            case "one group only":
                bundle = try Self.bundle(
                    dir, pki: pki, image: new, strategy: strategy, groups: ["B"], name: "other.ferry")
                expected = .notCompatible
            case "a foreign MBR":
                var sector = MBRSector(try disk.read(at: 0, count: 512))
                sector.grubKernelSector = 2048
                try disk.write(sector.bytes, at: 0)
                expected = .bootloaderForeign
            case "an MBR changed since it was recorded":
                let digest = SHA256Hasher.hash(try disk.read(at: 0, count: 512)).hex
                try StateStore(directory: "\(device)/state").setSlotRecord(
                    InstalledSlotRecord(raw: ["selectors": .array([.string(digest)])]), for: "bootloader")
                try disk.write([0x90], at: 0x70)  // boot code, not the pointer
                expected = .bootloaderForeign
            default:
                try disk.write([~(try disk.read(at: (8 << 20) - 512 + 60, count: 1)[0])], at: (8 << 20) - 512 + 60)
                expected = .bootloaderForeign
            }
            try disk.synchronize()
            let before = try Self.snapshot(device)
            let error = #expect(throws: FerryError.self) { try Self.install(device, bundle) }
            #expect(error?.code == expected, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            let says = [
                "another strategy": "is made for raw-fallback", "one group only": "not A",
                "a foreign MBR": "neither bootloader region",
                "an MBR changed since it was recorded": "changed since Ferry last wrote it",
                "a damaged backup GPT": "backup GPT is not valid",
            ][what]!
            #expect(error?.message.contains(says) == true, "\(error?.message ?? "")")
            let after = try Self.snapshot(device)
            #expect(after.keys.sorted() == before.keys.sorted())
            for (name, bytes) in before where after[name] != bytes { Issue.record("\(what): \(name) changed") }
        }
    }

    /// A device that fails under the bootloader update: one clean error, the selector (and so
    /// the bootloader the firmware runs) unchanged, and the next install on a healthy device
    /// finishes.
    @Test(arguments: ["a byte silently corrupted in the new region", "EIO on the switch", "EIO on every sync"])
    func aDeviceFaultLeavesTheOldBootloaderSelected(_ fault: String) async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Self.device(
                dir, strategy: "gpt-switch", old: seededBytes(count: 1 << 20, seed: 40), pki: pki)
            let strategy = BootloaderStrategy.gptSwitch(regions: Self.espRegions, partition: 1)
            let bundle = try Self.bundle(
                dir, pki: pki, image: seededBytes(count: 1 << 20, seed: 41), strategy: "gpt-switch")
            let expected: FerryError.Code = fault.hasPrefix("a byte") ? .readBackMismatch : .io
            let error = #expect(throws: FerryError.self) {
                try Self.install(device, bundle) { disk in
                    // Only the boot disk: the slot writers open image files of their own.
                    guard disk.path.hasSuffix("boot-disk.img") else { return disk }
                    switch fault {
                    case "a byte silently corrupted in the new region":
                        return FaultyBlockTarget(disk, corruptByteAt: Self.espRegions[1].offset + 4097)
                    case "EIO on the switch":
                        return FaultyBlockTarget(disk, failAfterBytes: 1 << 20)
                    default:
                        return FaultyBlockTarget(disk, failSynchronize: true)
                    }
                }
            }
            #expect(error?.code == expected, "\(error?.message ?? "")")
            #expect(error?.message.contains("\n") == false)
            #expect(try Self.selection(device, strategy).active == 0, "the old ESP stays selected")
            _ = try Self.install(device, bundle)
            #expect(try Self.selection(device, strategy).active == 1)
        }
    }

    /// A strategy works on the whole boot disk (or eMMC): a slot naming a partition of it is
    /// refused before anything is written.
    @Test(arguments: ["gpt-switch", "emmc-boot"])
    func aBootloaderSlotOnAPartitionIsRefused(_ strategy: String) async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Self.device(dir, strategy: "gpt-switch", old: seededBytes(count: 4096, seed: 40), pki: pki)
            var text = String(decoding: try readFile("\(device)/system.json"), as: UTF8.self)
            let update = strategy == "emmc-boot" ? #"{ "strategy": "emmc-boot" }"# : #"{ "strategy": "gpt-switch""#
            text = text.replacing(
                #""device": "boot-disk.img", "update": { "strategy": "gpt-switch""#,
                with: #""disk": "boot-disk.img", "partition": "2", "update": \#(update)"#)
            if strategy == "emmc-boot" {
                text = text.replacing(
                    #", "partition": 1, "regions": [{ "offset": 1048576, "size": 1048576 }, { "offset": 2097152, "size": 1048576 }] }"#,
                    with: "")
            }
            try DurableFile.write(text, to: "\(device)/system.json")
            let bundle = try Self.bundle(dir, pki: pki, image: seededBytes(count: 4096, seed: 41), strategy: strategy)
            let before = try Self.snapshot(device)
            let error = #expect(throws: FerryError.self) { try Self.install(device, bundle) }
            #expect(error?.code == .configurationInvalid, "\(error?.message ?? "")")
            #expect(error?.message.contains("not a partition") == true, "\(error?.message ?? "")")
            #expect(try Self.snapshot(device) == before)
        }
    }

    /// A bootloader slot with a strategy is written only by its strategy: `write-slot` and any
    /// other plain open are refused (its device is the whole boot disk).
    @Test func aBootloaderSlotIsNeverOpenedAsAPlainSlot() async throws {
        try await withTemporaryDirectory { dir in
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Self.device(dir, strategy: "gpt-switch", old: seededBytes(count: 4096, seed: 40), pki: pki)
            let configuration = try SystemConfiguration.load("\(device)/system.json")
            let slot = try #require(configuration.singleCopySlot(ofClass: "bootloader"))
            let access = SlotAccess(
                configuration: configuration, booted: BootedGroup(bootname: "A", source: "test"),
                mounts: MountTable(mounts: []),
                logger: quietLogger)
            let before = try readFile("\(device)/boot-disk.img")
            let error = #expect(throws: FerryError.self) { try access.openForWriting(slot) }
            #expect(error?.code == .deviceBooted)
            #expect(
                error?.message.contains("install a bundle made with --bootloader") == true, "\(error?.message ?? "")")
            let result = try Shell.run([
                TestEnvironment.ferryBinary, "write-slot", "bootloader", "\(dir)/pki/ca.pem", "--config",
                "\(device)/system.json",
            ])
            #expect(result.status == 22, "\(result.output)")
            #expect(try readFile("\(device)/boot-disk.img") == before)
        }
    }
}
