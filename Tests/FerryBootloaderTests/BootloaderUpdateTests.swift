import FerryBootloader
import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// Bootloader updates on disk images (no root): the GPT codec against sfdisk, and each strategy
/// updating, resuming after a cut between any two phases, and refusing what it cannot explain.
@Suite struct BootloaderUpdateTests {
    static let mib: Int64 = 1 << 20

    /// A GPT disk of 8 MiB made by sfdisk: partition 1 ("esp", 1 MiB) at `espStart` sectors, partition 2 after 4 MiB.
    static func gptDisk(_ path: String, espStart: Int = 2048, firstLBA: Int = 34) throws {
        try makeFile(path, size: 8 * mib)
        let script = """
            label: gpt
            first-lba: \(firstLBA)
            start=\(espStart), size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
            start=8192, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="rootfs"
            """
        let result = try Shell.run([
            "sh", "-c", "printf '%s\\n' \"$0\" | sfdisk -q --no-reread --no-tell-kernel \"$1\"", script, path,
        ])
        #expect(result.status == 0, "\(result.output)")
    }

    /// sfdisk's view of partition `number`: start sector.
    static func sfdiskStart(_ path: String, _ number: Int) throws -> Int? {
        let dump = try Shell.check(["sfdisk", "-d", path])
        for line in dump.split(separator: "\n") where line.hasPrefix("\(path)\(number) ") {
            guard let field = line.split(separator: ",").first(where: { $0.contains("start=") }) else { continue }
            return Int(String(field.split(separator: "=").last ?? "").filter(\.isNumber))
        }
        return nil
    }

    func open(_ path: String) throws -> BlockDevice { try BlockDevice.openSharedForWriting(path) }

    // MARK: - GPT codec

    @Test func theGPTCodecReadsWhatSfdiskWroteAndWritesWhatItReads() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let disk = try open(path)
            defer { try? disk.close() }
            let copies = try GPT.read(disk)
            let primary = try copies.primary.get()
            let backup = try copies.backup.get()
            #expect(primary.isCopy(of: backup))
            #expect(primary.usedEntries.map(\.entry.name) == ["esp", "rootfs"])
            #expect(primary.entry(0).firstLBA == 2048 && primary.entry(0).lastLBA == 4095)
            // Moved and written back, backup first: sfdisk sees the move, both copies valid.
            let moved = primary.moving(entry: 0, to: 4096...6143)
            for (offset, bytes) in moved.writes() { try disk.write(bytes, at: offset) }
            var movedBackup = backup
            movedBackup.entryArray = moved.entryArray
            movedBackup.header.entriesCRC = moved.header.entriesCRC
            for (offset, bytes) in movedBackup.writes() { try disk.write(bytes, at: offset) }
            try disk.synchronize()
            #expect(try Self.sfdiskStart(path, 1) == 4096)
            let again = try GPT.read(disk)
            #expect(try again.primary.get().isCopy(of: try again.backup.get()))
            let verify = try Shell.run(["sfdisk", "--verify", path])
            #expect(verify.status == 0, "\(verify.output)")
        }
    }

    @Test func aDamagedCopyIsToldApartFromAValidOne() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let disk = try open(path)
            defer { try? disk.close() }
            // A byte of the primary entry array: its CRC no longer matches.
            try disk.write([0x5a], at: 2 * 512 + 40)
            let copies = try GPT.read(disk)
            #expect(throws: GPT.Problem.entriesChecksum) { try copies.primary.get() }
            #expect(try copies.backup.get().entry(0).name == "esp")
            #expect(copies.effective?.header.myLBA == UInt64(8 * Self.mib / 512) - 1)
            // The primary header's CRC.
            try disk.write([~(try disk.read(at: 512 + 60, count: 1)[0])], at: 512 + 60)
            #expect(throws: GPT.Problem.headerChecksum) { try GPT.read(disk).primary.get() }
        }
    }

    // MARK: - mbr-switch (GRUB i386-pc)

    /// A real GRUB i386-pc core.img made by grub-mkimage; `marker` changes its prefix, so two differ.
    static func coreImage(_ dir: String, marker: String) throws -> [UInt8] {
        let path = "\(dir)/core-\(marker).img"
        _ = try Shell.check([
            "grub-mkimage", "-O", "i386-pc", "-o", path, "-p", "(hd0,gpt2)/grub-\(marker)", "biosdisk", "part_gpt",
            "fat",
        ])
        return try readFile(path)
    }

    static let grubRegions = [
        BootRegion(offset: 64 * 512, size: 960 * 512), BootRegion(offset: 1024 * 512, size: 960 * 512),
    ]

    /// A GPT disk whose gap before the first partition holds two core.img regions; region 1 active.
    static func grubDisk(_ dir: String) throws -> (path: String, old: [UInt8]) {
        let path = "\(dir)/disk.img"
        try gptDisk(path)
        let old = try coreImage(dir, marker: "old")
        let disk = try BlockDevice.openSharedForWriting(path)
        defer { try? disk.close() }
        var sector = MBRSector(try disk.read(at: 0, count: 512))
        // boot.img's code in the first 440 bytes (the partition table kept), as grub-bios-setup does.
        let bootImage = try readFile("/usr/lib/grub/i386-pc/boot.img")
        sector.bytes.replaceSubrange(0..<440, with: bootImage[0..<440])
        sector.grubKernelSector = grubRegions[0].firstSector
        try disk.write(sector.bytes, at: 0)
        try disk.write(
            try GRUBCoreImage.patched(old, toRunAt: grubRegions[0].firstSector), at: grubRegions[0].offset)
        try disk.synchronize()
        return (path, old)
    }

    @Test(.enabled(if: TextFile.exists("/usr/lib/grub/i386-pc/boot.img"), "needs grub-pc-bin"))
    func mbrSwitchWritesTheOtherRegionThenOneSector() async throws {
        try await withTemporaryDirectory { dir in
            let (path, _) = try Self.grubDisk(dir)
            let new = try Self.coreImage(dir, marker: "new")
            let before = try readFile(path)
            let disk = try open(path)
            defer { try? disk.close() }
            let updater = BootloaderUpdater(
                strategy: .mbrSwitch(regions: Self.grubRegions, pointer: .grubCore), disk: disk, name: "bootloader")
            try updater.checkLayout()
            #expect(try updater.selection().active == 0)
            let phases = try updater.phases(for: new)
            #expect(phases.count == 2)
            try updater.run(phases)
            #expect(try updater.selection().active == 1)
            let after = try readFile(path)
            // Sector 0: only the kernel sector changed; region 1 untouched; region 2 the patched image.
            let changed = (0..<512).filter { before[$0] != after[$0] }
            #expect(changed.allSatisfy { (0x5c..<0x64).contains($0) } && !changed.isEmpty)
            #expect(Array(after[(64 * 512)..<(1024 * 512)]) == Array(before[(64 * 512)..<(1024 * 512)]))
            let region2 = Array(after[(1024 * 512)..<(1024 * 512 + new.count)])
            #expect(region2.littleEndian(UInt64.self, at: GRUBCoreImage.blocklistStartOffset) == 1025)
            #expect(Array(region2[512...]) == Array(new[512...]))
            // Nothing left to do; the partition table still verifies.
            #expect(try updater.phases(for: new).isEmpty)
            #expect(try Shell.run(["sfdisk", "--verify", path]).status == 0)
        }
    }

    @Test(.enabled(if: TextFile.exists("/usr/lib/grub/i386-pc/boot.img"), "needs grub-pc-bin"))
    func mbrSwitchCutAfterAnyPhaseIsFinishedByTheNextRun() async throws {
        try await withTemporaryDirectory { dir in
            let (path, _) = try Self.grubDisk(dir)
            let new = try Self.coreImage(dir, marker: "new")
            let start = try readFile(path)
            for cut in 0...2 {
                try makeFile(path, bytes: start)
                let disk = try open(path)
                defer { try? disk.close() }
                let updater = BootloaderUpdater(
                    strategy: .mbrSwitch(regions: Self.grubRegions, pointer: .grubCore), disk: disk, name: "bootloader")
                try updater.run(Array(try updater.phases(for: new).prefix(cut)))
                #expect(try updater.selection().active == (cut == 2 ? 1 : 0), "cut after phase \(cut)")
                try updater.run(try updater.phases(for: new))
                #expect(try updater.selection().active == 1)
                #expect(try updater.phases(for: new).isEmpty)
            }
        }
    }

    @Test func mbrSwitchRefusesAPointerAtNeitherRegionAndAnImageLargerThanARegion() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let disk = try open(path)
            defer { try? disk.close() }
            let updater = BootloaderUpdater(
                strategy: .mbrSwitch(regions: Self.grubRegions, pointer: .grubCore), disk: disk, name: "bootloader")
            let foreign = #expect(throws: FerryError.self) { try updater.selection() }
            #expect(foreign?.code == .bootloaderForeign)
            #expect(foreign?.message.contains("neither bootloader region") == true, "\(foreign?.message ?? "")")
            let large = #expect(throws: FerryError.self) {
                try updater.phases(for: [UInt8](repeating: 1, count: 961 * 512))
            }
            #expect(large?.code == .deviceTooSmall)
        }
    }

    /// mbr-switch with an MBR partition as the pointer (a DOS disk, as ROMs that follow entry 1 read it).
    @Test func mbrSwitchMovesAPartitionEntryAndNothingElse() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try makeFile(path, size: 8 * Self.mib)
            let script = "label: dos\nstart=2048, size=2048, type=c\nstart=8192, size=4096, type=83\n"
            let result = try Shell.run([
                "sh", "-c", "printf '\(script)' | sfdisk -q --no-reread --no-tell-kernel \"$0\"", path,
            ])
            #expect(result.status == 0, "\(result.output)")
            let regions = [
                BootRegion(offset: 2048 * 512, size: 2048 * 512), BootRegion(offset: 4096 * 512, size: 2048 * 512),
            ]
            let strategy = BootloaderStrategy.mbrSwitch(regions: regions, pointer: .partition(1))
            #expect(strategy.layoutProblem() == nil)
            let disk = try open(path)
            defer { try? disk.close() }
            let old = seededBytes(count: 1 << 20, seed: 7)
            let new = seededBytes(count: 900 << 10, seed: 8)
            try disk.write(old, at: regions[0].offset)
            let before = try disk.read(at: 0, count: 512)
            let updater = BootloaderUpdater(strategy: strategy, disk: disk, name: "boot")
            try updater.checkLayout()
            #expect(try updater.selection().active == 0)
            for cut in 0...2 {
                try disk.write(before, at: 0)
                try updater.run(Array(try updater.phases(for: new).prefix(cut)))
                #expect(try updater.selection().active == (cut == 2 ? 1 : 0), "cut after phase \(cut)")
                try updater.run(try updater.phases(for: new))
            }
            #expect(try updater.selection().active == 1)
            #expect(try Self.sfdiskStart(path, 1) == 4096)
            let after = try disk.read(at: 0, count: 512)
            let changed = (0..<512).filter { before[$0] != after[$0] }
            // Only the entry's start LBA (0x1be + 8 ..< +12): its size, type and CHS bytes stay.
            #expect(!changed.isEmpty && changed.allSatisfy { (0x1c6..<0x1ca).contains($0) }, "\(changed)")
            #expect(try disk.read(at: regions[1].offset, count: new.count) == new)
            // A region over partition 2 is refused.
            let overlapping = BootloaderUpdater(
                strategy: .mbrSwitch(
                    regions: [regions[0], BootRegion(offset: 8192 * 512, size: 2048 * 512)], pointer: .partition(1)),
                disk: disk, name: "boot")
            let error = #expect(throws: FerryError.self) { try overlapping.checkLayout() }
            #expect(error?.message.contains("overlaps MBR partition 2") == true, "\(error?.message ?? "")")
        }
    }

    /// grub-core: an image that is not an i386-pc core.img (its block list does not cover it) is
    /// refused before anything is written.
    @Test(.enabled(if: TextFile.exists("/usr/lib/grub/i386-pc/boot.img"), "needs grub-pc-bin"))
    func mbrSwitchRefusesAnImageThatIsNotACoreImage() async throws {
        try await withTemporaryDirectory { dir in
            let (path, _) = try Self.grubDisk(dir)
            let before = try readFile(path)
            let disk = try open(path)
            defer { try? disk.close() }
            let updater = BootloaderUpdater(
                strategy: .mbrSwitch(regions: Self.grubRegions, pointer: .grubCore), disk: disk, name: "bootloader")
            let error = #expect(throws: FerryError.self) {
                try updater.phases(for: seededBytes(count: 64 << 10, seed: 3))
            }
            #expect(error?.code == .bundleInvalid)
            #expect(error?.message.contains("not a GRUB i386-pc core.img") == true, "\(error?.message ?? "")")
            #expect(try readFile(path) == before)
        }
    }

    // MARK: - gpt-switch

    static let espRegions = [
        BootRegion(offset: 2048 * 512, size: 2048 * 512), BootRegion(offset: 4096 * 512, size: 2048 * 512),
    ]

    @Test func gptSwitchMovesTheEntryBackupFirstAndEveryCutResumes() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let old = seededBytes(count: 1 << 20, seed: 1)
            let new = seededBytes(count: 1 << 20, seed: 2)
            do {
                let disk = try open(path)
                try disk.write(old, at: Self.espRegions[0].offset)
                try disk.close()
            }
            let start = try readFile(path)
            let originalGUID = try GPT.read(try open(path)).effective!.entry(0).uniqueGUID
            for cut in 0...3 {
                try makeFile(path, bytes: start)
                let disk = try open(path)
                defer { try? disk.close() }
                let updater = BootloaderUpdater(
                    strategy: .gptSwitch(regions: Self.espRegions, partition: 1), disk: disk, name: "esp")
                try updater.checkLayout()
                let phases = try updater.phases(for: new)
                #expect(phases.count == 3)
                #expect(phases[1].what.contains("backup") && phases[2].what.contains("primary"))
                try updater.run(Array(phases.prefix(cut)))
                // After the backup alone, the copies differ: only an update in progress explains it.
                if cut == 2 {
                    let refused = #expect(throws: FerryError.self) { try updater.selection() }
                    #expect(refused?.code == .bootloaderForeign)
                }
                let inProgress = cut > 0
                #expect(
                    try updater.selection(inProgress: inProgress).active == (cut == 3 ? 1 : 0), "cut after phase \(cut)"
                )
                try updater.run(try updater.phases(for: new, inProgress: inProgress))
                let copies = try GPT.read(disk)
                let primary = try copies.primary.get()
                #expect(primary.isCopy(of: try copies.backup.get()))
                #expect(primary.entry(0).firstLBA == 4096 && primary.entry(0).uniqueGUID == originalGUID)
                #expect(try updater.phases(for: new).isEmpty)
                #expect(try Self.sfdiskStart(path, 1) == 4096)
            }
        }
    }

    @Test func gptSwitchUsesAValidBackupWhenThePrimaryIsDamagedAndRefusesADamagedBackup() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let new = seededBytes(count: 4096, seed: 2)
            let disk = try open(path)
            defer { try? disk.close() }
            let updater = BootloaderUpdater(
                strategy: .gptSwitch(regions: Self.espRegions, partition: 1), disk: disk, name: "esp")
            let lastLBA = 8 * Self.mib / 512 - 1
            // A damaged backup header that no update explains: refused, naming the backup.
            let saved = try disk.read(at: lastLBA * 512, count: 512)
            try disk.write([~(try disk.read(at: lastLBA * 512 + 60, count: 1)[0])], at: lastLBA * 512 + 60)
            let refused = #expect(throws: FerryError.self) { try updater.phases(for: new) }
            #expect(refused?.code == .bootloaderForeign)
            #expect(refused?.message.contains("backup GPT") == true, "\(refused?.message ?? "")")
            try disk.write(saved, at: lastLBA * 512)
            // A damaged primary: the firmware boots from the backup; so does Ferry, and rewrites both.
            try disk.write([~(try disk.read(at: 512 + 60, count: 1)[0])], at: 512 + 60)
            #expect(try updater.selection().damagedTable.hasPrefix("primary GPT"))
            try updater.run(try updater.phases(for: new))
            let copies = try GPT.read(disk)
            #expect(try copies.primary.get().isCopy(of: try copies.backup.get()))
            #expect(try updater.selection().active == 1)
        }
    }

    /// sfdisk's default for a new disk puts the first usable LBA at 2048: the gap after the
    /// entry array is no partition's, and GRUB's regions there are accepted; a region over the
    /// entry array is not.
    @Test func regionsInTheGapAfterTheGPTAreAcceptedNotOverTheTable() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path, espStart: 4096, firstLBA: 2048)
            let disk = try open(path)
            defer { try? disk.close() }
            #expect(try GPT.read(disk).effective?.header.firstUsableLBA == 2048)
            try BootloaderUpdater(
                strategy: .mbrSwitch(regions: Self.grubRegions, pointer: .grubCore), disk: disk, name: "bootloader"
            ).checkLayout()
            let overTable = [BootRegion(offset: 16 * 512, size: 48 * 512), Self.grubRegions[1]]
            let error = #expect(throws: FerryError.self) {
                try BootloaderUpdater(
                    strategy: .mbrSwitch(regions: overTable, pointer: .grubCore), disk: disk, name: "bootloader"
                ).checkLayout()
            }
            #expect(error?.code == .configurationInvalid)
            #expect(error?.message.contains("overlaps the primary GPT") == true, "\(error?.message ?? "")")
            let lastSectors = BootRegion(offset: 8 * Self.mib - 16 * 512, size: 8 * 512)
            let atEnd = #expect(throws: FerryError.self) {
                try BootloaderUpdater(
                    strategy: .mbrSwitch(regions: [Self.grubRegions[0], lastSectors], pointer: .grubCore), disk: disk,
                    name: "bootloader"
                ).checkLayout()
            }
            #expect(atEnd?.message.contains("overlaps the backup GPT") == true, "\(atEnd?.message ?? "")")
        }
    }

    @Test func aRegionOverlappingAPartitionIsRefused() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try Self.gptDisk(path)
            let disk = try open(path)
            defer { try? disk.close() }
            let regions = [Self.espRegions[0], BootRegion(offset: 8192 * 512, size: 2048 * 512)]
            let updater = BootloaderUpdater(
                strategy: .gptSwitch(regions: regions, partition: 1), disk: disk, name: "esp")
            let error = #expect(throws: FerryError.self) { try updater.checkLayout() }
            #expect(error?.code == .configurationInvalid)
            #expect(error?.message.contains("overlaps GPT partition 2 ('rootfs')") == true, "\(error?.message ?? "")")
            #expect(
                BootloaderStrategy.gptSwitch(regions: [regions[0], regions[0]], partition: 1).layoutProblem() != nil)
        }
    }

    // MARK: - raw-fallback

    /// The ROM model (docs/bootloader-updates.md): it tries the primary copy, then the secondary;
    /// it takes the first whose header is a valid header (here: the header of the old or the new
    /// image) and runs that copy's body without checking it. Returns the image that runs, or nil
    /// (bricked: no valid header, or a valid header over a body that is not its own).
    static func romBoots(_ disk: [UInt8], copies: [BootRegion], headerSize: Int, images: [[UInt8]]) -> [UInt8]? {
        for copy in copies {
            let start = Int(copy.offset)
            let header = Array(disk[start..<(start + headerSize)])
            guard let image = images.first(where: { Array($0[..<headerSize]) == header }) else { continue }
            return Array(disk[start..<(start + image.count)]) == image ? image : nil
        }
        return nil
    }

    @Test func rawFallbackKeepsACompleteCopyAtEveryPhaseAndEveryTornWrite() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/disk.img"
            try makeFile(path, size: 4 * Self.mib)
            let copies = [
                BootRegion(offset: Self.mib, size: Self.mib), BootRegion(offset: 2 * Self.mib, size: Self.mib),
            ]
            let old = seededBytes(count: 300_000, seed: 5)
            let new = seededBytes(count: 310_000, seed: 6)
            do {
                let disk = try open(path)
                for copy in copies { try disk.write(old, at: copy.offset) }
                try disk.close()
            }
            let start = try readFile(path)
            let strategy = BootloaderStrategy.rawFallback(copies: copies, headerSize: 512)
            #expect(strategy.layoutProblem() == nil)
            let phases = try BootloaderUpdater(strategy: strategy, disk: try open(path), name: "spl").phases(for: new)
            #expect(phases.count == 6)
            var states = 0
            // Every phase boundary, and each phase's write torn at a sector-aligned point.
            for cut in 0..<phases.count {
                for torn in [0, 512, 4096, 65_536] {
                    try makeFile(path, bytes: start)
                    let disk = try open(path)
                    defer { try? disk.close() }
                    let updater = BootloaderUpdater(strategy: strategy, disk: disk, name: "spl")
                    try updater.run(Array(phases.prefix(cut)))
                    if torn > 0, let write = phases[cut].writes.first, torn < write.bytes.count {
                        try disk.write(Array(write.bytes[..<torn]), at: write.offset)
                    }
                    let image = Self.romBoots(try readFile(path), copies: copies, headerSize: 512, images: [old, new])
                    #expect(image != nil, "no complete copy boots after phase \(cut), torn at \(torn)")
                    states += 1
                    try updater.run(try updater.phases(for: new))
                    #expect(
                        Self.romBoots(try readFile(path), copies: copies, headerSize: 512, images: [old, new]) == new)
                }
            }
            #expect(states == 24)
        }
    }
}
