import FerrySystem

/// A byte range of the boot disk that holds one copy of the bootloader.
public struct BootRegion: Sendable, Equatable, CustomStringConvertible {
    public var offset: Int64
    public var size: Int64

    public init(offset: Int64, size: Int64) {
        self.offset = offset
        self.size = size
    }

    public var range: Range<Int64> { offset..<(offset + size) }
    public var firstSector: UInt64 { UInt64(offset / 512) }
    /// The sectors it covers (512-byte sectors).
    public var sectors: Range<UInt64> { UInt64(offset / 512)..<UInt64((offset + size) / 512) }
    public var description: String { "bytes \(offset)–\(offset + size - 1)" }
}

/// How a bootloader that exists once on the device (what the ROM or firmware loads before any A/B
/// logic) is updated without a window in which no complete bootloader is selected
/// (docs/bootloader-updates.md). Each writes the new image where nothing boots from it, syncs and
/// reads it back, and only then selects it with one atomic write; `rawFallback` has no selector
/// and relies on the ROM trying a second copy.
public enum BootloaderStrategy: Sendable, Equatable {
    /// Two regions; one 512-byte MBR sector selects one of them.
    case mbrSwitch(regions: [BootRegion], pointer: MBRPointer)
    /// Two regions; GPT partition `partition` (1-based) is moved between them, backup table first.
    case gptSwitch(regions: [BootRegion], partition: Int)
    /// Two copies the ROM tries in order (`copies[0]` first); each rewritten body first, header
    /// (`headerSize` bytes at its start) last, the secondary before the primary.
    case rawFallback(copies: [BootRegion], headerSize: Int)
    /// The eMMC's two boot partitions (boot0, boot1: whole devices beside the user area); the
    /// EXT_CSD PARTITION_CONFIG byte selects the one the ROM boots, switched with one CMD6.
    case emmcBoot

    /// What the MBR sector's selecting field is.
    public enum MBRPointer: Sendable, Equatable {
        /// GRUB i386-pc: boot.img's kernel sector (0x5c) names core.img's first sector; each
        /// region's core.img is patched so its block list points into that region.
        case grubCore
        /// Primary partition `number` (1–4): its start LBA is moved between the regions.
        case partition(Int)
    }

    public var name: String {
        switch self {
        case .mbrSwitch: "mbr-switch"
        case .gptSwitch: "gpt-switch"
        case .rawFallback: "raw-fallback"
        case .emmcBoot: "emmc-boot"
        }
    }

    /// The names the configuration and the bundle use.
    public static let names = ["mbr-switch", "gpt-switch", "raw-fallback", "emmc-boot"]

    public var regions: [BootRegion] {
        switch self {
        case .mbrSwitch(let regions, _), .gptSwitch(let regions, _): regions
        case .rawFallback(let copies, _): copies
        case .emmcBoot: []
        }
    }

    /// The largest image a region takes; nil for `emmcBoot`, whose boot partitions' size only the
    /// device knows.
    public var capacity: Int64? {
        if case .emmcBoot = self { return nil }
        return regions.map(\.size).min() ?? 0
    }

    /// Checks the layout (the configuration calls it): two regions, sector-aligned, not
    /// overlapping each other or the sectors the selector lives in.
    /// - Returns: what is wrong, or nil.
    public func layoutProblem() -> String? {
        if case .emmcBoot = self { return nil }
        let regions = regions
        guard regions.count == 2 else { return "needs exactly two regions, not \(regions.count)" }
        for region in regions {
            guard region.offset % 512 == 0, region.size % 512 == 0, region.size > 0 else {
                return "region \(region) is not whole 512-byte sectors"
            }
            // Sector 0 (MBR), and for GPT disks sectors 1–33 at least, hold the tables.
            guard region.offset >= 512 else { return "region \(region) overlaps the first sector (the MBR)" }
        }
        guard regions[0].range.upperBound <= regions[1].offset || regions[1].range.upperBound <= regions[0].offset
        else {
            return "regions \(regions[0]) and \(regions[1]) overlap"
        }
        switch self {
        case .mbrSwitch(let regions, .partition(let number)):
            guard (1...4).contains(number) else { return "partition \(number) is not a primary partition (1–4)" }
            guard regions[0].size == regions[1].size else {
                return "both regions must have the partition's size (one MBR entry, moved)"
            }
        case .gptSwitch(let regions, let partition):
            guard partition >= 1 else { return "partition \(partition) is not a partition number" }
            guard regions[0].size == regions[1].size else {
                return "both regions must have the same size (one GPT entry, moved)"
            }
        case .rawFallback(_, let headerSize):
            guard headerSize > 0, headerSize % 512 == 0, Int64(headerSize) < capacity ?? 0 else {
                return "headerSize \(headerSize) must be whole 512-byte sectors, smaller than a copy"
            }
        case .mbrSwitch(_, .grubCore), .emmcBoot: break
        }
        return nil
    }
}
