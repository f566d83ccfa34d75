import FerrySystem

/// The first sector of a disk: boot code, the four primary partition entries at 0x1be, and the
/// 0x55 0xaa signature at 0x1fe. `mbr-switch` changes one field of it and writes it back whole.
public struct MBRSector: Sendable, Equatable {
    public static let size = 512
    /// Where GRUB's `boot.img` keeps the LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`), 8 bytes LE.
    public static let grubKernelSectorOffset = 0x5c
    /// Where the partition entries start, 16 bytes each.
    public static let partitionEntriesOffset = 0x1be

    public var bytes: [UInt8]

    public init(_ bytes: [UInt8]) {
        precondition(bytes.count == Self.size, "an MBR sector is 512 bytes")
        self.bytes = bytes
    }

    /// Whether the sector ends with the 0x55 0xaa boot signature firmware checks before running it.
    public var hasBootSignature: Bool { bytes[510] == 0x55 && bytes[511] == 0xaa }

    /// The LBA GRUB's boot.img loads core.img's first sector from.
    public var grubKernelSector: UInt64 {
        get { bytes.littleEndian(UInt64.self, at: Self.grubKernelSectorOffset) }
        set { bytes.setLittleEndian(newValue, at: Self.grubKernelSectorOffset) }
    }

    /// The start LBA of primary partition `number` (1–4).
    public func partitionStart(_ number: Int) -> UInt32 {
        bytes.littleEndian(UInt32.self, at: Self.partitionEntriesOffset + 16 * (number - 1) + 8)
    }

    public mutating func setPartitionStart(_ number: Int, _ lba: UInt32) {
        bytes.setLittleEndian(lba, at: Self.partitionEntriesOffset + 16 * (number - 1) + 8)
    }

    /// The sector count of primary partition `number` (1–4).
    public func partitionSectors(_ number: Int) -> UInt32 {
        bytes.littleEndian(UInt32.self, at: Self.partitionEntriesOffset + 16 * (number - 1) + 12)
    }

    /// The partition type byte of primary partition `number` (0: unused; 0xee: a GPT's protective entry).
    public func partitionType(_ number: Int) -> UInt8 { bytes[Self.partitionEntriesOffset + 16 * (number - 1) + 4] }

    /// The sectors primary partition `number` covers; nil when the entry is unused.
    public func partitionSectorRange(_ number: Int) -> Range<UInt64>? {
        guard partitionType(number) != 0, partitionSectors(number) > 0 else { return nil }
        let start = UInt64(partitionStart(number))
        return start..<(start + UInt64(partitionSectors(number)))
    }
}

/// GRUB i386-pc's core.img: its first sector (diskboot.img) ends with a block list naming where
/// the rest of core.img lies; for a core.img written right after that sector, its one entry
/// starts at the sector after it (what `grub-bios-setup` patches when it installs core.img).
public enum GRUBCoreImage {
    /// The start LBA of the first block-list entry, 8 bytes LE (0x1f4: the sector's end, less 12).
    public static let blocklistStartOffset = 0x1f4
    /// The entry's length in sectors, 2 bytes LE.
    public static let blocklistLengthOffset = 0x1fc
    /// The segment it is loaded at, 2 bytes LE (0x820 in every core.img grub-mkimage makes).
    public static let blocklistSegmentOffset = 0x1fe

    /// `image` patched to run from `lba`: its block list points at `lba + 1`.
    /// - Throws: `.bundleInvalid` when the image is too short, or its block list does not cover the rest of it.
    public static func patched(_ image: [UInt8], toRunAt lba: UInt64) throws(FerryError) -> [UInt8] {
        try check(image)
        var patched = image
        patched.setLittleEndian(lba + 1, at: blocklistStartOffset)
        return patched
    }

    /// Checks that `image` looks like an i386-pc core.img whose first block-list entry covers the rest of it.
    public static func check(_ image: [UInt8]) throws(FerryError) {
        guard image.count > 512 else {
            throw FerryError(
                code: .bundleInvalid,
                message: "the bootloader image is \(image.count) bytes: not a GRUB i386-pc core.img")
        }
        let sectors = Int(image.littleEndian(UInt16.self, at: blocklistLengthOffset))
        let segment = image.littleEndian(UInt16.self, at: blocklistSegmentOffset)
        let rest = (image.count - 512 + 511) / 512
        // grub-mkimage writes one entry covering exactly the rest, loaded at segment 0x820.
        guard sectors == rest, segment == 0x820 else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "the bootloader image is not a GRUB i386-pc core.img: its first sector's block list names \(sectors) sectors at segment 0x\(String(segment, radix: 16)), not the \(rest) more it has at 0x820"
            )
        }
    }
}
