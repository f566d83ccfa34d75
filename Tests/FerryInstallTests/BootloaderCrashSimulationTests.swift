import FerryBootloader
import FerryBundle
import FerryCore
import FerryCrypto
import FerryJSON
import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Crash simulation of bootloader updates (docs/reliability.md, docs/bootloader-updates.md): an
/// install of a bundle with a bootloader and a rootfs is recorded (`IOTrace`), then every state a
/// power cut could leave is built: a cut after every write and sync; where at most 8 writes are
/// unsynced at the cut (the switch), every subset of them survives in turn; elsewhere seeded
/// choices (whole, torn, lost). Each state is booted by a model of the firmware:
///
/// * BIOS + GRUB (`mbr-switch`): sector 0 must carry 0x55aa; its kernel sector names core.img's
///   first sector, whose block list must name the sector after it; what it loads must be a whole
///   core.img (old or new) patched for that place;
/// * UEFI (`gpt-switch`): the primary GPT if valid, else the backup, which the firmware then
///   writes over the primary (OVMF does); the partition's entry selects a region, which must hold
///   a whole ESP image (old or new);
/// * a ROM with two copies (`raw-fallback`): the first copy, else the second, whose header is a
///   valid header; it runs that copy's body unchecked, so the body must be the header's own;
/// * an eMMC ROM (`emmc-boot`, the simulated eMMC): the boot partition EXT_CSD PARTITION_CONFIG
///   enables must hold a whole image (a CMD6 switch writes its byte atomically).
///
/// Required of each state: the firmware finds a complete old or new bootloader; then the same
/// install run again finishes, and the firmware boots the new one. 0 states may fail.
@Suite struct BootloaderCrashSimulationTests {
    typealias Device = CrashSimulationTests
    typealias Install = BootloaderInstallTests

    /// The files of a device the bootloader update writes.
    static func bootFiles(_ strategy: BootloaderStrategy) -> [String] {
        if case .emmcBoot = strategy { return Install.emmcFiles }
        return ["boot-disk.img"]
    }

    /// What the firmware finds on a device's boot disk (or eMMC): the image it runs, or nil (no
    /// complete bootloader).
    static func firmwareBoots(
        device: String, strategy: BootloaderStrategy, images: [[UInt8]]
    ) throws -> [UInt8]? {
        if case .emmcBoot = strategy {
            let value = try readFile("\(device)/mmc.ext_csd")[EMMCBootArea.partitionConfigIndex]
            guard let partition = EMMCBootArea.bootPartition(enabledBy: value) else { return nil }
            let bytes = try readFile("\(device)/mmcboot\(partition)")
            return images.first { Array(bytes.prefix($0.count)) == $0 }
        }
        let disk = try BlockDevice.openSharedForWriting("\(device)/boot-disk.img")
        defer { try? disk.close() }
        switch strategy {
        case .mbrSwitch(let regions, _):
            let sector = MBRSector(try disk.read(at: 0, count: 512))
            guard sector.hasBootSignature else { return nil }
            let lba = sector.grubKernelSector
            guard let region = regions.firstIndex(where: { $0.firstSector == lba }) else { return nil }
            for image in images {
                let patched = try GRUBCoreImage.patched(image, toRunAt: regions[region].firstSector)
                if try disk.read(at: Int64(lba) * 512, count: patched.count) == patched { return image }
            }
            return nil
        case .gptSwitch(let regions, let partition):
            let copies = try GPT.read(disk)
            guard let table = copies.effective else { return nil }
            if case .failure = copies.primary {
                // OVMF rewrites the primary from the backup (header and entries at their places).
                var primary = table
                primary.header.myLBA = 1
                primary.header.alternateLBA = table.header.myLBA
                primary.header.entriesLBA = 2
                for (offset, bytes) in primary.writes() { try disk.write(bytes, at: offset) }
                try disk.synchronize()
            }
            let entry = table.entry(partition - 1)
            guard let region = regions.first(where: { $0.sectors.lowerBound == entry.firstLBA }) else { return nil }
            for image in images where try disk.read(at: region.offset, count: image.count) == image {
                return image
            }
            return nil
        case .rawFallback(let copies, let headerSize):
            for copy in copies {
                let header = try disk.read(at: copy.offset, count: headerSize)
                guard let image = images.first(where: { Array($0[..<headerSize]) == header }) else { continue }
                return try disk.read(at: copy.offset, count: image.count) == image ? image : nil
            }
            return nil
        case .emmcBoot:
            return nil
        }
    }

    /// Which states are exported for real firmware: about 20 spread over the whole update, and
    /// every state with a table write lost or torn.
    static func exports(cut: Int, of count: Int, states: Int, tornTable: Bool) -> Bool {
        tornTable || states % max(1, (count + 1) * 3 / 20) == 0
    }

    /// Whether the state has a table write (a GPT header or entry array, the MBR sector) unsynced
    /// and lost or torn at the cut: the states that matter most to the firmware.
    static func tornTable(_ events: [IOEvent], _ cut: Int, _ fates: [Int: CrashSimulationTests.Fate]) -> Bool {
        fates.contains { index, fate in
            guard fate != .whole, case .write(let path, let offset, _) = events[index], path.hasSuffix("/boot-disk.img")
            else { return false }
            return offset < 34 * 512 || offset >= (8 << 20) - 33 * 512
        }
    }

    final class Recorder: IORecorder {
        let events = Mutex<[IOEvent]>([])
        func record(_ event: IOEvent) { events.withLock { $0.append(event) } }
    }

    struct Setup {
        var strategy: BootloaderStrategy
        var old: [UInt8]
        var new: [UInt8]
    }

    /// The images: `FERRY_BOOT_IMAGES=<dir>` names a folder with `<strategy>.old` and
    /// `<strategy>.new` (tools/qemu-test's real GRUB core.img and ESP images, which print a marker);
    /// otherwise GRUB core.img files made here, and seeded bytes.
    static func setup(_ name: String, dir: String) throws -> Setup? {
        if let folder = ProcessEnvironment.variables["FERRY_BOOT_IMAGES"], TextFile.exists("\(folder)/\(name).old") {
            guard var setup = try setup(name, dir: dir, generated: false) else { return nil }
            setup.old = try readFile("\(folder)/\(name).old")
            setup.new = try readFile("\(folder)/\(name).new")
            return setup
        }
        return try setup(name, dir: dir, generated: true)
    }

    private static func setup(_ name: String, dir: String, generated: Bool) throws -> Setup? {
        switch name {
        case "mbr-switch":
            guard Install.hasGRUB else { return nil }
            return Setup(
                strategy: .mbrSwitch(regions: Install.grubRegions, pointer: .grubCore),
                old: generated ? try Install.coreImage(dir, "old") : [],
                new: generated ? try Install.coreImage(dir, "new") : [])
        case "emmc-boot":
            return Setup(
                strategy: .emmcBoot, old: seededBytes(count: 300 << 10, seed: 54),
                new: seededBytes(count: 310 << 10, seed: 55))
        case "gpt-switch":
            return Setup(
                strategy: .gptSwitch(regions: Install.espRegions, partition: 1),
                old: seededBytes(count: 1 << 20, seed: 50), new: seededBytes(count: 768 << 10, seed: 51))
        default:
            // Outside the partitions of Install.device's disk (ESP 1–2 MiB, data 4–6 MiB).
            let copies = [BootRegion(offset: 3 << 20, size: 1 << 20), BootRegion(offset: 2 << 20, size: 1 << 20)]
            return Setup(
                strategy: .rawFallback(copies: copies, headerSize: 512),
                old: seededBytes(count: 300 << 10, seed: 52), new: seededBytes(count: 310 << 10, seed: 53))
        }
    }

    @Test(arguments: ["mbr-switch", "gpt-switch", "raw-fallback", "emmc-boot"])
    func everyCrashStateOfABootloaderUpdateBootsACompleteBootloader(strategyName: String) async throws {
        let seed = UInt64(ProcessEnvironment.variables["FERRY_RELIABILITY_SEED"] ?? "") ?? 1
        let seededPerCut = ReliabilityProfile.isLong ? 12 : 3
        try await withTemporaryDirectory { dir in
            guard let setup = try Self.setup(strategyName, dir: dir) else {
                print("skipped: \(strategyName) needs grub-pc-bin")
                return
            }
            let pki = try TestPKI.make(in: "\(dir)/pki", signers: ["signer1"])
            let device = try Install.device(
                dir, strategy: strategyName == "raw-fallback" ? "gpt-switch" : strategyName, old: setup.old, pki: pki)
            if case .rawFallback(let copies, _) = setup.strategy {
                // The same disk, with both copies of the old image in place and the configuration
                // saying raw-fallback.
                let disk = try BlockDevice.openSharedForWriting("\(device)/boot-disk.img")
                for copy in copies { try disk.write(setup.old, at: copy.offset) }
                try disk.close()
                var text = String(decoding: try readFile("\(device)/system.json"), as: UTF8.self)
                text = text.replacing(
                    #""strategy": "gpt-switch", "partition": 1, "regions": [{ "offset": 1048576, "size": 1048576 }, { "offset": 2097152, "size": 1048576 }]"#,
                    with:
                        #""strategy": "raw-fallback", "regions": [{ "offset": 3145728, "size": 1048576 }, { "offset": 2097152, "size": 1048576 }]"#
                )
                try DurableFile.write(text, to: "\(device)/system.json")
            }
            let strategy = try #require(
                try SystemConfiguration.load("\(device)/system.json").singleCopySlot(ofClass: "bootloader")?.update)
            let bundle = try Install.bundle(dir, pki: pki, image: setup.new, strategy: strategyName)
            let snapshot = "\(dir)/snapshot"
            let bootFiles = Self.bootFiles(strategy)
            try Device.copyDevice(from: device, to: snapshot, extra: bootFiles)
            #expect(strategy == setup.strategy)
            #expect(try Self.firmwareBoots(device: snapshot, strategy: strategy, images: [setup.old]) == setup.old)

            // The recording.
            let recorder = Recorder()
            try CrashSimulationTests.recording.withLock { _ in
                IOTrace.recorder = recorder
                defer { IOTrace.recorder = nil }
                _ = try Install.install(device, bundle)
            }
            let events = recorder.events.withLock { $0 }.filter {
                switch $0 {
                case .write(let path, _, _), .zero(let path, _, _), .sync(let path), .replace(let path, _),
                    .remove(let path), .directorySync(let path):
                    return path.hasPrefix(device)
                }
            }
            let bootPaths = Set(bootFiles.map { "\(device)/\($0)" })
            #expect(
                events.contains {
                    if case .write(let path, _, _) = $0 { bootPaths.contains(path) } else { false }
                })

            // The replay.
            let exportFolder =
                bootFiles == ["boot-disk.img"] ? ProcessEnvironment.variables["FERRY_BOOT_STATES_OUT"] : nil
            var random = SeededGenerator(seed: seed &* 0x1000 &+ UInt64(strategyName.count))
            var states = 0
            var subsetStates = 0
            var violations: [String] = []
            let scratch =
                (TextFile.isDirectory("/dev/shm") ? "/dev/shm" : dir)
                + "/ferry-test-boot-crash-\(getpid())-\(strategyName)"
            defer { _ = try? Shell.check(["rm", "-rf", scratch]) }
            for cut in 0...events.count {
                // The boot disk's (the eMMC's) writes not synced at this cut, each file by its own syncs.
                var unsynced: [Int] = []
                for (index, event) in events[..<cut].enumerated() {
                    switch event {
                    case .write(let path, _, _) where bootPaths.contains(path): unsynced.append(index)
                    case .sync(let path) where bootPaths.contains(path):
                        unsynced.removeAll {
                            if case .write(let written, _, _) = events[$0] { written == path } else { false }
                        }
                    default: break
                    }
                }
                var choices: [[Int: CrashSimulationTests.Fate]] = []
                if !unsynced.isEmpty && unsynced.count <= 8 {
                    for mask in 0..<(1 << unsynced.count) {
                        var fates: [Int: CrashSimulationTests.Fate] = [:]
                        for (bit, index) in unsynced.enumerated() {
                            fates[index] = mask & (1 << bit) != 0 ? .whole : .lost
                        }
                        choices.append(fates)
                    }
                    subsetStates += choices.count
                }
                choices += Array(repeating: [:], count: seededPerCut)
                for fates in choices {
                    try Device.copyDevice(from: snapshot, to: scratch, extra: bootFiles)
                    try Device.materialize(
                        events, cut: cut, device: device, into: scratch, random: &random, fates: fates)
                    // Exported for real firmware (tools/qemu-boot-states): the disk as the cut left it.
                    let export = exportFolder.flatMap { folder in
                        Self.exports(
                            cut: cut, of: events.count, states: states, tornTable: Self.tornTable(events, cut, fates))
                            ? "\(folder)/\(strategyName)/state-\(String(String(states + 10001).dropFirst()))" : nil
                    }
                    if let export {
                        try DurableFile.createDirectory(Paths.directory(of: export))
                        try makeFile("\(export).img", bytes: try readFile("\(scratch)/boot-disk.img"))
                    }
                    states += 1
                    let boots = try Self.firmwareBoots(
                        device: scratch, strategy: strategy, images: [setup.old, setup.new])
                    var problems: [String] = []
                    if boots == nil { problems.append("no complete bootloader is selected") }
                    if let export {
                        let expected = boots == nil ? "none" : boots == setup.new ? "new" : "old"
                        let torn = Self.tornTable(events, cut, fates) ? ", a table write lost" : ""
                        try DurableFile.write(
                            "\(expected) cut after event \(cut) of \(events.count)\(torn)\n", to: "\(export).expected")
                    }
                    do {
                        _ = try Install.install(scratch, bundle)
                        let after = try Self.firmwareBoots(
                            device: scratch, strategy: strategy, images: [setup.old, setup.new])
                        if after != setup.new {
                            problems.append("after the install ran again, the new bootloader is not selected")
                        }
                    } catch {
                        problems.append("the install run again failed: \(error)")
                    }
                    if !problems.isEmpty {
                        violations.append(
                            "cut after event \(cut) (state \(states)): \(problems.joined(separator: "; "))")
                    }
                }
            }
            let summary =
                "bootloader-crash-simulation \(strategyName): \(events.count) events, \(states) states (\(subsetStates) of them every subset of the unsynced switch writes), \(violations.count) violations, seed \(seed)"
            try ReliabilityProfile.report(
                summary,
                [
                    "kind": .string("bootloader-crash-simulation"), "strategy": .string(strategyName),
                    "events": .number(Double(events.count)), "states": .number(Double(states)),
                    "subsetStates": .number(Double(subsetStates)), "violations": .number(Double(violations.count)),
                    "seed": .number(Double(seed)),
                ])
            #expect(violations.isEmpty, "\(violations.prefix(5).joined(separator: "\n"))")
        }
    }
}
