import FerryCrypto
import FerrySystem

/// Updates a bootloader that exists once on the device with its `BootloaderStrategy`, on the boot
/// disk `disk` (a block device or an image file): inspects which copy is selected, plans the
/// writes as phases (each synced and read back before the next), and runs them.
///
/// Every phase is repeatable, and one whose bytes are already on the disk is skipped, so an
/// update cut at any instant is finished by running it again with the same image: the phases
/// are derived from what the disk holds, and the caller's journal only says whether a torn table
/// is Ferry's own doing (`inProgress`).
public struct BootloaderUpdater {
    public let strategy: BootloaderStrategy
    /// The boot disk; for `emmcBoot`, the EXT_CSD register (`EMMCBootArea.register`).
    public let disk: any BlockTarget
    /// For `emmcBoot`: boot0 and boot1, the phases' `device` 0 and 1.
    public let partitions: [any BlockTarget]
    /// The slot's name, for messages.
    public let name: String

    public init(strategy: BootloaderStrategy, disk: any BlockTarget, partitions: [any BlockTarget] = [], name: String) {
        self.strategy = strategy
        self.disk = disk
        self.partitions = partitions
        self.name = name
    }

    /// The largest image the strategy takes (for `emmcBoot`, the smaller boot partition).
    public var capacity: Int64 { strategy.capacity ?? partitions.map(\.byteCount).min() ?? 0 }

    /// One step of an update: writes, then a sync, then (when `readBack`) the written bytes read
    /// back and compared.
    public struct Phase: Sendable {
        public var what: String
        public var writes: [(offset: Int64, bytes: [UInt8])]
        /// Skipped when these bytes are already on the disk (by default: its own writes).
        public var present: [(offset: Int64, bytes: [UInt8])]
        /// The selector digest (`Selection.selectorDigest`) once this phase is on the disk, for
        /// the phases that change the selector.
        public var selects: String?
        /// Where its writes go: nil, the disk; k, `partitions[k]` (emmc-boot's boot partitions).
        public var device: Int?

        init(
            _ what: String, _ writes: [(offset: Int64, bytes: [UInt8])],
            present: [(offset: Int64, bytes: [UInt8])]? = nil,
            selects: String? = nil, device: Int? = nil
        ) {
            self.what = what
            self.writes = writes
            self.present = present ?? writes
            self.selects = selects
            self.device = device
        }
    }

    /// What the disk selects now.
    public struct Selection: Sendable, Equatable {
        /// The region the firmware boots (for raw-fallback: 0, the primary, when its copy is whole).
        public var active: Int
        /// SHA-256 (hex) of what selects it: the MBR sector, or the GPT's entries and disk fields
        /// (the same for a primary the firmware rewrote from the backup); recorded after an update
        /// so the next one notices a table changed behind Ferry's back.
        public var selectorDigest: String
        /// For gpt-switch: a copy of the table that is not valid, and why ("" when both are).
        public var damagedTable: String
    }

    // MARK: - Inspection

    /// Reads the selector.
    /// - Throws: `.bootloaderForeign` when it selects neither region, or a GPT is not readable.
    public func selection(inProgress: Bool = false) throws(FerryError) -> Selection {
        let regions = strategy.regions
        switch strategy {
        case .mbrSwitch(_, let pointer):
            let sector = MBRSector(try disk.read(at: 0, count: 512))
            let lba: UInt64
            switch pointer {
            case .grubCore: lba = sector.grubKernelSector
            case .partition(let number): lba = UInt64(sector.partitionStart(number))
            }
            guard let active = regions.firstIndex(where: { $0.firstSector == lba }) else {
                throw foreign(
                    "its MBR points at sector \(lba), which is neither bootloader region (\(regions[0].firstSector), \(regions[1].firstSector))"
                )
            }
            return Selection(active: active, selectorDigest: SHA256Hasher.hash(sector.bytes).hex, damagedTable: "")
        case .gptSwitch(_, let partition):
            let (table, damaged) = try effectiveGPT(inProgress: inProgress)
            guard partition <= Int(table.header.entryCount) else {
                throw foreign("its GPT has \(table.header.entryCount) entries, no partition \(partition)")
            }
            let entry = table.entry(partition - 1)
            guard entry.isUsed, let active = regions.firstIndex(where: { $0.sectors.lowerBound == entry.firstLBA }),
                entry.lastLBA + 1 == regions[active].sectors.upperBound
            else {
                throw foreign(
                    "GPT partition \(partition) covers sectors \(entry.firstLBA)–\(entry.lastLBA), which is neither bootloader region"
                )
            }
            return Selection(active: active, selectorDigest: Self.digest(table), damagedTable: damaged)
        case .rawFallback:
            return Selection(active: 0, selectorDigest: "", damagedTable: "")
        case .emmcBoot:
            let value = try disk.read(at: Int64(EMMCBootArea.partitionConfigIndex), count: 1)[0]
            guard let active = EMMCBootArea.bootPartition(enabledBy: value) else {
                let enabled = (value >> 3) & 7
                throw foreign(
                    "its EXT_CSD PARTITION_CONFIG is 0x\(String(value, radix: 16)): BOOT_PARTITION_ENABLE \(enabled) (\(enabled == 7 ? "the user area" : "none")) is neither boot partition"
                )
            }
            // Boot enable and BOOT_ACK: what selects; the access bits change with every command.
            return Selection(active: active, selectorDigest: SHA256Hasher.hash([value & 0x78]).hex, damagedTable: "")
        }
    }

    /// The GPT the firmware uses, and which copy is damaged.
    /// - Throws: `.bootloaderForeign` when neither copy is valid; when the backup is damaged and
    ///   no update of Ferry's was in progress (`inProgress`); when both are valid but differ and
    ///   no update was in progress.
    func effectiveGPT(inProgress: Bool) throws(FerryError) -> (GPT, String) {
        let copies = try GPT.read(disk)
        switch (copies.primary, copies.backup) {
        case (.success(let primary), .success(let backup)):
            guard primary.isCopy(of: backup) || inProgress else {
                throw foreign(
                    "its primary and backup GPT are both valid but differ, and no update of Ferry's explains it: repair the table first"
                )
            }
            return (primary, "")
        case (.failure(let problem), .success(let backup)):
            // UEFI firmware boots from the backup then (and rewrites the primary from it).
            return (backup, "primary GPT: \(problem)")
        case (.success(let primary), .failure(let problem)):
            guard inProgress else {
                throw foreign(
                    "its backup GPT is not valid (\(problem)) and no update of Ferry's explains it: repair it first (for example 'sgdisk -e')"
                )
            }
            return (primary, "backup GPT: \(problem)")
        case (.failure(let primary), .failure(let backup)):
            throw foreign("neither GPT copy is valid (primary: \(primary); backup: \(backup))")
        }
    }

    /// A table's identity, independent of which copy it was read from.
    static func digest(_ table: GPT) -> String {
        var bytes = table.header.diskGUID + table.entryArray
        var fields = [UInt8](repeating: 0, count: 24)
        fields.setLittleEndian(table.header.firstUsableLBA, at: 0)
        fields.setLittleEndian(table.header.lastUsableLBA, at: 8)
        fields.setLittleEndian(table.header.entryCount, at: 16)
        fields.setLittleEndian(table.header.entrySize, at: 20)
        bytes += fields
        return SHA256Hasher.hash(bytes).hex
    }

    private func foreign(_ detail: String) -> FerryError {
        FerryError(code: .bootloaderForeign, message: "bootloader slot '\(name)' (\(strategy.name)): \(detail)")
    }

    /// Checks the regions against the disk: inside it, and overlapping no partition (but the one
    /// a switch moves between them).
    /// - Throws: `.configurationInvalid` naming the partition a region overlaps.
    public func checkLayout() throws(FerryError) {
        if case .emmcBoot = strategy { return }  // whole devices of their own
        let sectors = UInt64(disk.byteCount / 512)
        var partitions: [(String, Range<UInt64>)] = []
        let mbr = MBRSector(try disk.read(at: 0, count: 512))
        let isGPT = (1...4).contains { mbr.partitionType($0) == 0xee }
        if isGPT, let table = try GPT.read(disk).effective {
            for (index, entry) in table.usedEntries {
                if case .gptSwitch(_, let moved) = strategy, moved == index + 1 { continue }
                partitions.append(
                    ("GPT partition \(index + 1) ('\(entry.name)')", entry.firstLBA..<(entry.lastLBA + 1)))
            }
            // The tables themselves: header and entry array of each copy. The space between the
            // primary's entries and the first usable LBA belongs to no partition (GRUB's core.img
            // regions of a GPT disk without a BIOS boot partition live there).
            let arraySectors = (UInt64(table.header.entryCount) * UInt64(table.header.entrySize) + 511) / 512
            partitions.append(("the primary GPT", 0..<(2 + arraySectors)))
            let backupStart = min(table.header.lastUsableLBA + 1, sectors - min(sectors, 1 + arraySectors))
            partitions.append(("the backup GPT", backupStart..<sectors))
        } else {
            for number in 1...4 {
                if case .mbrSwitch(_, .partition(let moved)) = strategy, moved == number { continue }
                if let range = mbr.partitionSectorRange(number) {
                    partitions.append(("MBR partition \(number)", range))
                }
            }
        }
        for (index, region) in strategy.regions.enumerated() {
            guard region.sectors.upperBound <= sectors else {
                throw layout("region \(index + 1) (\(region)) ends past the end of the disk")
            }
            if let (what, _) = partitions.first(where: { $0.1.overlaps(region.sectors) }) {
                throw layout("region \(index + 1) (\(region)) overlaps \(what)")
            }
        }
    }

    private func layout(_ detail: String) -> FerryError {
        FerryError(code: .configurationInvalid, message: "bootloader slot '\(name)' (\(strategy.name)): \(detail)")
    }

    // MARK: - Planning

    /// The phases that put `image` in place and select it; empty when it is already selected.
    /// - Throws: `.deviceTooSmall` when the image does not fit a region; `.bundleInvalid` when it
    ///   is not what the strategy needs (a GRUB core.img for `grubCore`); `.bootloaderForeign`.
    public func phases(for image: [UInt8], inProgress: Bool = false) throws(FerryError) -> [Phase] {
        guard Int64(image.count) <= capacity else {
            throw FerryError(
                code: .deviceTooSmall,
                message:
                    "the bootloader image is \(image.count) bytes, larger than the \(capacity)-byte regions of slot '\(name)'"
            )
        }
        switch strategy {
        case .mbrSwitch(let regions, let pointer):
            return try mbrPhases(image, regions: regions, pointer: pointer, inProgress: inProgress)
        case .gptSwitch(let regions, let partition):
            return try gptPhases(image, regions: regions, partition: partition, inProgress: inProgress)
        case .rawFallback(let copies, let headerSize):
            guard image.count > headerSize else {
                throw FerryError(
                    code: .bundleInvalid,
                    message: "the bootloader image is \(image.count) bytes: no more than its \(headerSize)-byte header")
            }
            return rawPhases(image, copies: copies, headerSize: headerSize)
        case .emmcBoot:
            return try emmcPhases(image, inProgress: inProgress)
        }
    }

    /// The image into the boot partition not enabled; then PARTITION_CONFIG switched to it.
    private func emmcPhases(_ image: [UInt8], inProgress: Bool) throws(FerryError) -> [Phase] {
        let current = try selection(inProgress: inProgress)
        if try holds(image, at: 0, on: current.active) { return [] }
        let target = 1 - current.active
        let index = Int64(EMMCBootArea.partitionConfigIndex)
        let value = EMMCBootArea.partitionConfig(try disk.read(at: index, count: 1)[0], enabling: target)
        return [
            Phase("the new bootloader into boot\(target)", [(0, image)], device: target),
            Phase(
                "EXT_CSD PARTITION_CONFIG switched to boot\(target) (0x\(String(value, radix: 16)))",
                [(index, [value])],
                selects: SHA256Hasher.hash([value & 0x78]).hex),
        ]
    }

    /// The bytes region `index` holds for `image` (a GRUB core.img patched to run from there).
    public func regionImage(_ image: [UInt8], region index: Int) throws(FerryError) -> [UInt8] {
        guard case .mbrSwitch(let regions, .grubCore) = strategy else { return image }
        return try GRUBCoreImage.patched(image, toRunAt: regions[index].firstSector)
    }

    private func mbrPhases(
        _ image: [UInt8], regions: [BootRegion], pointer: BootloaderStrategy.MBRPointer, inProgress: Bool
    )
        throws(FerryError) -> [Phase]
    {
        let current = try selection(inProgress: inProgress)
        if try holds(try regionImage(image, region: current.active), at: regions[current.active].offset) { return [] }
        let target = 1 - current.active
        var sector = MBRSector(try disk.read(at: 0, count: 512))
        switch pointer {
        case .grubCore: sector.grubKernelSector = regions[target].firstSector
        case .partition(let number): sector.setPartitionStart(number, UInt32(regions[target].firstSector))
        }
        return [
            Phase(
                "the new bootloader into region \(target + 1) (\(regions[target]))",
                [(regions[target].offset, try regionImage(image, region: target))]),
            Phase(
                "the MBR switched to region \(target + 1)", [(0, sector.bytes)],
                selects: SHA256Hasher.hash(sector.bytes).hex),
        ]
    }

    private func gptPhases(_ image: [UInt8], regions: [BootRegion], partition: Int, inProgress: Bool) throws(FerryError)
        -> [Phase]
    {
        let current = try selection(inProgress: inProgress)
        let copies = try GPT.read(disk)
        let (table, _) = try effectiveGPT(inProgress: inProgress)
        if try holds(image, at: regions[current.active].offset) {
            // Selected already; a copy still old or torn (a cut during the switch) is rewritten
            // from the one in use, so both copies agree.
            guard !current.damagedTable.isEmpty || !isBothCopies(copies, of: table) else { return [] }
            return tablePhases(table, copies: copies, selecting: current.active, entry: partition)
        }
        let target = 1 - current.active
        let moved = table.moving(
            entry: partition - 1, to: regions[target].sectors.lowerBound...(regions[target].sectors.upperBound - 1))
        return [
            Phase(
                "the new bootloader into region \(target + 1) (\(regions[target]))", [(regions[target].offset, image)])
        ]
            + tablePhases(moved, copies: copies, selecting: target, entry: partition)
    }

    /// The backup table, then the primary, each as `table` at its own place on the disk.
    private func tablePhases(_ table: GPT, copies: GPT.Copies, selecting region: Int, entry: Int) -> [Phase] {
        let lastLBA = UInt64(disk.byteCount / 512) - 1
        var backup = table
        var primary = table
        let arraySectors = UInt64((table.entryArray.count + 511) / 512)
        // Each copy keeps its own place: the one read where it was valid, else the standard one.
        backup.header = (try? copies.backup.get())?.header ?? table.header
        backup.header.myLBA = lastLBA
        backup.header.alternateLBA = 1
        if (try? copies.backup.get()) == nil { backup.header.entriesLBA = lastLBA - arraySectors }
        primary.header = (try? copies.primary.get())?.header ?? table.header
        primary.header.myLBA = 1
        primary.header.alternateLBA = lastLBA
        if (try? copies.primary.get()) == nil { primary.header.entriesLBA = 2 }
        backup.header.entriesCRC = table.header.entriesCRC
        primary.header.entriesCRC = table.header.entriesCRC
        let digest = Self.digest(table)
        return [
            Phase(
                "the backup GPT switched to region \(region + 1) (partition \(entry))", backup.writes(), selects: digest
            ),
            Phase(
                "the primary GPT switched to region \(region + 1) (partition \(entry))", primary.writes(),
                selects: digest),
        ]
    }

    private func isBothCopies(_ copies: GPT.Copies, of table: GPT) -> Bool {
        guard case .success(let primary) = copies.primary, case .success(let backup) = copies.backup else {
            return false
        }
        return primary.entryArray == table.entryArray && backup.entryArray == table.entryArray
    }

    /// For each copy, the secondary first: header invalidated, body, header; a copy already whole is left alone.
    private func rawPhases(_ image: [UInt8], copies: [BootRegion], headerSize: Int) -> [Phase] {
        let header = Array(image[..<headerSize])
        let body = Array(image[headerSize...])
        var phases: [Phase] = []
        for (index, copy) in zip([1, 0], [copies[1], copies[0]]) {
            let label = index == 0 ? "primary" : "secondary"
            let whole = [(copy.offset, image)]
            phases.append(
                Phase(
                    "the \(label) copy's header invalidated", [(copy.offset, [UInt8](repeating: 0, count: headerSize))],
                    present: whole))
            phases.append(Phase("the \(label) copy's body", [(copy.offset + Int64(headerSize), body)], present: whole))
            phases.append(Phase("the \(label) copy's header", [(copy.offset, header)], present: whole))
        }
        return phases
    }

    // MARK: - Running

    /// Runs `phases` in order: each one's writes, a sync, and a read-back of what it wrote; a
    /// phase whose bytes are present already is skipped. `done(k)` runs after phase k is durable
    /// (the caller's journal).
    /// - Throws: `.readBackMismatch` when the disk does not hold what was written; I/O errors.
    public func run(_ phases: [Phase], done: (Int) throws(FerryError) -> Void = { _ in }) throws(FerryError) {
        for (index, phase) in phases.enumerated() {
            let target = phase.device.map { partitions[$0] } ?? disk
            var present = true
            for write in phase.present where present {
                present = try holds(write.bytes, at: write.offset, on: phase.device)
            }
            if !present {
                for write in phase.writes { try target.write(write.bytes, at: write.offset) }
                try target.synchronize()
                for write in phase.writes where try !holds(write.bytes, at: write.offset, on: phase.device) {
                    throw FerryError(
                        code: .readBackMismatch,
                        message:
                            "bootloader slot '\(name)': \(phase.what) reads back differently from what was written: the device is failing"
                    )
                }
            }
            try done(index)
        }
    }

    /// Whether the disk (or `partitions[device]`) holds `bytes` at `offset`.
    func holds(_ bytes: [UInt8], at offset: Int64, on device: Int? = nil) throws(FerryError) -> Bool {
        let target = device.map { partitions[$0] } ?? disk
        guard offset + Int64(bytes.count) <= target.byteCount else { return false }
        return try target.read(at: offset, count: bytes.count) == bytes
    }
}
