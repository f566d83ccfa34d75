import FerryBootloader
import FerrySystem
import Logging

/// A slot opened exclusively for writing. Closing it releases the device and detaches the loop
/// device Ferry attached for it (a loop device Ferry reused stays attached).
public final class OpenSlot {
    public let slot: ResolvedSlot
    /// The device to write: the block device, the image file, or the loop partition node.
    public let device: BlockDevice
    private var loop: LoopDevice?

    init(slot: ResolvedSlot, device: BlockDevice, loop: LoopDevice?) {
        self.slot = slot
        self.device = device
        self.loop = loop
    }

    deinit { try? close() }

    /// The path written to (for messages): `/dev/loop3p2`, `/dev/mmcblk0p3`, `rootfs_b.img`.
    public var devicePath: String { device.path }

    /// Closes the device, then detaches the loop device if this process attached it.
    public func close() throws(FerryError) {
        defer { loop = nil }
        try device.close()
        try loop?.detach()
    }
}

/// The only way Ferry opens a slot for writing: every safety rule of ARCHITECTURE.md §4.1 is
/// checked here, before the device is opened.
///
/// Refused: a slot of the booted group (or any slot while the booted group is unknown); a device
/// that is mounted (`/proc/self/mountinfo`), including through any loop device backed by the same
/// image file over an overlapping range; a device someone else holds exclusively (`O_EXCL` /
/// `flock`); a path that the configuration does not name as a slot.
public struct SlotAccess {
    public let configuration: SystemConfiguration
    public let booted: BootedGroup
    public let mounts: MountTable
    public let logger: Logger

    public init(configuration: SystemConfiguration, booted: BootedGroup, mounts: MountTable, logger: Logger) {
        self.configuration = configuration
        self.booted = booted
        self.mounts = mounts
        self.logger = logger
    }

    /// Refuses unless `slot` may be written: configured, and not in the booted (or an unknown) group.
    /// - Throws: `.deviceNotConfigured`, `.deviceBooted`.
    public func checkWritable(_ slot: SlotConfiguration) throws(FerryError) {
        try checkWritable(slot, withStrategy: false)
    }

    /// `withStrategy`: the bootloader step's own open (`openBootloader`); every other open of a
    /// slot with an update strategy is refused (its device is the whole boot disk).
    private func checkWritable(_ slot: SlotConfiguration, withStrategy: Bool) throws(FerryError) {
        guard configuration.slot(named: slot.name) == slot else {
            throw FerryError(code: .deviceNotConfigured, message: "slot '\(slot.name)' is not in \(configuration.path)")
        }
        guard let bootedName = booted.bootname else {
            throw FerryError(
                code: .deviceBooted,
                message: "refusing to write slot '\(slot.name)': the booted slot group is unknown (\(booted.source))")
        }
        guard slot.bootname != bootedName else {
            throw FerryError(
                code: .deviceBooted,
                message: "refusing to write slot '\(slot.name)': it belongs to the booted group \(bootedName)")
        }
        if let strategy = slot.update, !withStrategy {
            throw FerryError(
                code: .deviceBooted,
                message:
                    "refusing to write slot '\(slot.name)' directly: it is a bootloader updated with \(strategy.name) (its device is the whole boot disk); install a bundle made with --bootloader"
            )
        }
        // The only copy: a cut during the write leaves the module torn (docs/configuration.md).
        guard !slot.singleCopy || slot.writeInPlace || slot.update != nil else {
            throw FerryError(
                code: .deviceBooted,
                message:
                    "refusing to write slot '\(slot.name)': it is single-copy (no A/B) and is written in place only with \"writeInPlace\": true in its configuration"
            )
        }
    }

    /// Finds the configured slot whose device is `path` (a device node or image file).
    /// - Throws: `.deviceNotConfigured` when no slot of the configuration is that device.
    public func slot(forDevice path: String) throws(FerryError) -> SlotConfiguration {
        var resolver = SlotResolver()
        let target = try SlotResolver.locate(path: path, key: path).0
        for slot in configuration.slots {
            guard let resolved = try? resolver.resolve(slot, configuration: configuration) else { continue }
            switch (resolved.location, target) {
            case (.blockDevice(_, let a), .blockDevice(_, let b)) where a == b: return slot
            case (.imageFile(let a), .imageFile(let b)) where ResolvedSlot.sameFile(a, b): return slot
            default: continue
            }
        }
        throw FerryError(
            code: .deviceNotConfigured,
            message: "'\(path)' is not a slot of \(configuration.path); Ferry writes only configured slots")
    }

    /// Every check of `openForWriting` that needs no open: the booted group, configuration and
    /// mounts.
    public func checkCanOpen(_ slot: SlotConfiguration) throws(FerryError) {
        _ = try checkedLocation(slot)
    }

    /// Every check of `openForWriting`, the exclusive open included (a device someone else holds
    /// is refused too), then closes it again. Installs run it for every target slot before the
    /// first write, so that a refusal leaves the boot environment and the state untouched.
    public func checkCanOpenExclusively(_ slot: SlotConfiguration) throws(FerryError) {
        try openForWriting(slot).close()
    }

    /// The checks of `checkCanOpen`, returning where the slot is.
    private func checkedLocation(_ slot: SlotConfiguration) throws(FerryError) -> ResolvedSlot {
        try checkWritable(slot)
        var resolver = SlotResolver()
        let resolved = try resolver.resolve(slot, configuration: configuration)
        switch resolved.location {
        case .blockDevice(let path, let number):
            try refuseIfMounted(deviceNumber: number, what: "slot '\(slot.name)' (\(path))")
        case .imageFile(let path):
            try refuseIfLoopMounted(file: path, range: 0..<resolved.byteCount, slot: slot)
        case .diskPartition(let disk, let partition):
            try refuseIfLoopMounted(file: disk, range: partition.range, slot: slot)
        }
        return resolved
    }

    /// Opens `slot` exclusively for writing after every check above.
    /// - Throws: `.deviceNotConfigured`, `.deviceBooted`, `.deviceInUse`, `.deviceNotFound`,
    ///   `.deviceTooSmall`, `.loopDevice`, `.permissionDenied`.
    public func openForWriting(_ slot: SlotConfiguration) throws(FerryError) -> OpenSlot {
        let resolved = try checkedLocation(slot)
        switch resolved.location {
        case .blockDevice(let path, _), .imageFile(let path):
            let device = try BlockDevice.openExclusive(path)
            return OpenSlot(slot: resolved, device: device, loop: nil)
        case .diskPartition(let disk, let partition):
            let loop = try LoopDevice.attach(disk, logger: logger)
            do throws(FerryError) {
                let node = try loop.partitionDevice(partition)
                let device = try BlockDevice.openExclusive(node)
                guard device.byteCount == partition.byteCount else {
                    try? device.close()
                    throw FerryError(
                        code: .loopDevice,
                        message:
                            "\(node) is \(device.byteCount) bytes but partition \(partition.number) of '\(disk)' is \(partition.byteCount)"
                    )
                }
                logger.debug(
                    "Opened slot for writing",
                    metadata: [
                        "slot.name": "\(slot.name)", "slot.device": "\(node)", "loop.reused": "\(!loop.isAttachedByUs)",
                    ])
                return OpenSlot(slot: resolved, device: device, loop: loop)
            } catch {
                try? loop.detach()
                throw error
            }
        }
    }

    /// Opens what a bootloader slot's strategy writes: its boot disk (`openBootDisk`), or for
    /// `emmc-boot` the eMMC's boot area (boot0 and boot1 exclusively, force_ro cleared until
    /// closed, and the EXT_CSD register). The user area's partitions may be mounted.
    /// - Throws: as `openBootDisk`; `.deviceNotFound` for an eMMC without boot partitions.
    public func openBootloader(_ slot: SlotConfiguration) throws(FerryError) -> BootloaderDevices {
        guard case .emmcBoot = slot.update else { return BootloaderDevices(.disk(try openBootDisk(slot))) }
        try checkWritable(slot, withStrategy: true)
        return BootloaderDevices(.emmc(try EMMCBootArea.open(try Self.emmcPath(slot, configuration), forWriting: true)))
    }

    /// The user area of an `emmc-boot` slot's eMMC: its device, the whole eMMC.
    static func emmcPath(_ slot: SlotConfiguration, _ configuration: SystemConfiguration) throws(FerryError) -> String {
        var resolver = SlotResolver()
        switch try resolver.resolve(slot, configuration: configuration).location {
        case .blockDevice(let path, _), .imageFile(let path): return path
        case .diskPartition:
            throw FerryError(
                code: .configurationInvalid,
                message:
                    "slot '\(slot.name)': a bootloader updated with emmc-boot names the whole eMMC as its device, not a partition"
            )
        }
    }

    /// Opens the boot disk of a bootloader slot updated with a strategy. Its partitions may be
    /// mounted (the running system lives there), so the disk is not opened exclusively; instead
    /// nothing mounted may overlap a bootloader region (the regions overlap no partition but the
    /// one `gpt-switch` moves, which must not be mounted), and the disk itself must not be.
    /// - Throws: `.deviceNotConfigured`, `.deviceBooted`, `.deviceInUse`, `.configurationInvalid`
    ///   (a bootloader slot on a partition: its regions are byte ranges of the whole disk).
    func openBootDisk(_ slot: SlotConfiguration) throws(FerryError) -> BlockDevice {
        try checkWritable(slot, withStrategy: true)
        guard let strategy = slot.update else {
            throw FerryError(code: .internal, message: "slot '\(slot.name)' has no update strategy")
        }
        var resolver = SlotResolver()
        let resolved = try resolver.resolve(slot, configuration: configuration)
        switch resolved.location {
        case .blockDevice(let path, let number):
            try refuseIfMounted(deviceNumber: number, what: "boot disk '\(path)' of slot '\(slot.name)'")
            let name = String(path.split(separator: "/").last ?? "")
            for entry in FileSystem.entries("/sys/class/block/\(name)") where entry.hasPrefix(name) {
                let base = "/sys/class/block/\(name)/\(entry)"
                guard let start = TextFile.attribute("\(base)/start").flatMap(Int64.init),
                    let size = TextFile.attribute("\(base)/size").flatMap(Int64.init),
                    strategy.regions.contains(where: { $0.range.overlaps((start * 512)..<((start + size) * 512)) }),
                    let numbers = TextFile.attribute("\(base)/dev")?.split(separator: ":"), numbers.count == 2,
                    let major = UInt32(numbers[0]), let minor = UInt32(numbers[1])
                else { continue }
                if let mount = mounts.mounts(ofDevice: major, minor).first {
                    throw FerryError(
                        code: .deviceInUse,
                        message:
                            "refusing to update bootloader slot '\(slot.name)': /dev/\(entry) over one of its regions is mounted at \(mount.mountPoint)"
                    )
                }
            }
            return try BlockDevice.openSharedForWriting(path)
        case .imageFile(let path):
            for region in strategy.regions { try refuseIfLoopMounted(file: path, range: region.range, slot: slot) }
            return try BlockDevice.openSharedForWriting(path)
        case .diskPartition:
            throw FerryError(
                code: .configurationInvalid,
                message:
                    "slot '\(slot.name)': a bootloader updated with \(strategy.name) names the whole boot disk as its device, not a partition"
            )
        }
    }

    /// Opens `slot` for reading only: the source of a delta, a slot of the booted group. Its bytes
    /// must not change while they are read, so a slot mounted read-write is refused (a delta needs
    /// a read-only rootfs); unmounted or read-only mounted slots are fine.
    /// - Throws: `.deviceInUse` for a read-write mount; `.deviceNotFound`, `.permissionDenied`, `.io`.
    public func openForReading(_ slot: SlotConfiguration) throws(FerryError) -> BlockDevice {
        var resolver = SlotResolver()
        let resolved = try resolver.resolve(slot, configuration: configuration)
        let reason = "delta updates read it and need it read-only"
        switch resolved.location {
        case .blockDevice(let path, let number):
            try refuseIfMounted(
                deviceNumber: number, what: "slot '\(slot.name)' (\(path))", readWriteOnly: true, reason: reason)
            return try BlockDevice.openForReading(path)
        case .imageFile(let path):
            try refuseIfLoopMounted(
                file: path, range: 0..<resolved.byteCount, slot: slot, readWriteOnly: true, reason: reason)
            return try BlockDevice.openForReading(path)
        case .diskPartition(let disk, let partition):
            try refuseIfLoopMounted(file: disk, range: partition.range, slot: slot, readWriteOnly: true, reason: reason)
            return try BlockDevice.openForReading(disk, window: partition.range)
        }
    }

    private func refuseIfMounted(deviceNumber: UInt64, what: String, readWriteOnly: Bool = false, reason: String? = nil)
        throws(FerryError)
    {
        let (major, minor) = deviceNumberParts(deviceNumber)
        if let mount = mounts.mounts(ofDevice: major, minor).first(where: { !readWriteOnly || !$0.isReadOnly }) {
            if let reason {
                throw FerryError(
                    code: .deviceInUse, message: "\(what) is mounted read-write at \(mount.mountPoint): \(reason)")
            }
            throw FerryError(
                code: .deviceInUse, message: "refusing to write \(what): it is mounted at \(mount.mountPoint)")
        }
    }

    /// Refuses when any loop device backed by `file` exposes a mounted range overlapping `range`
    /// (with `readWriteOnly`, a read-write mounted one).
    private func refuseIfLoopMounted(
        file: String, range: Range<Int64>, slot: SlotConfiguration, readWriteOnly: Bool = false, reason: String? = nil
    ) throws(FerryError) {
        for info in LoopDevice.devices(backing: file) {
            let loopStart = info.offset
            let loopName = "loop\(info.number)"
            var exposed: [(name: String, range: Range<Int64>)] = []
            let loopSize = TextFile.attribute("/sys/block/\(loopName)/size").flatMap(Int64.init).map { $0 * 512 } ?? 0
            exposed.append((loopName, loopStart..<(loopStart + loopSize)))
            for number in 1...128 {
                let base = "/sys/block/\(loopName)/\(loopName)p\(number)"
                guard let start = TextFile.attribute("\(base)/start").flatMap(Int64.init),
                    let size = TextFile.attribute("\(base)/size").flatMap(Int64.init)
                else { continue }
                exposed.append(
                    ("\(loopName)p\(number)", (loopStart + start * 512)..<(loopStart + (start + size) * 512)))
            }
            for (name, region) in exposed where region.overlaps(range) {
                guard let numbers = TextFile.attribute("/sys/class/block/\(name)/dev")?.split(separator: ":"),
                    numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1])
                else { continue }
                if let mount = mounts.mounts(ofDevice: major, minor).first(where: { !readWriteOnly || !$0.isReadOnly })
                {
                    if let reason {
                        throw FerryError(
                            code: .deviceInUse,
                            message:
                                "slot '\(slot.name)' (/dev/\(name) over the same part of '\(file)') is mounted read-write at \(mount.mountPoint): \(reason)"
                        )
                    }
                    throw FerryError(
                        code: .deviceInUse,
                        message:
                            "refusing to write slot '\(slot.name)': /dev/\(name) over the same part of '\(file)' is mounted at \(mount.mountPoint)"
                    )
                }
            }
        }
    }
}

/// A bootloader slot's devices, open for its `BootloaderUpdater`: the boot disk, or an eMMC's
/// boot area.
public struct BootloaderDevices {
    public enum Devices {
        case disk(BlockDevice)
        case emmc(EMMCBootArea)
    }
    public let devices: Devices

    init(_ devices: Devices) { self.devices = devices }

    /// The updater over these devices, each image-file or block device passed through `wrap`
    /// (the fault tests' seam).
    public func updater(
        _ strategy: BootloaderStrategy, name: String, wrap: (BlockDevice) -> any BlockTarget = { $0 }
    ) -> BootloaderUpdater {
        switch devices {
        case .disk(let disk):
            return BootloaderUpdater(strategy: strategy, disk: wrap(disk), name: name)
        case .emmc(let area):
            return BootloaderUpdater(
                strategy: strategy, disk: area.registerFile.map(wrap) ?? area.register,
                partitions: area.partitions.map(wrap), name: name)
        }
    }

    public func close() {
        switch devices {
        case .disk(let disk): try? disk.close()
        case .emmc(let area): area.close()
        }
    }
}
