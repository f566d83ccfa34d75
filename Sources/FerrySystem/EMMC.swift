import CFerryShims
import SystemPackage

/// An eMMC's boot area: its two boot partitions and the EXT_CSD register whose PARTITION_CONFIG
/// byte (index 179) says which one the ROM boots (the `emmc-boot` bootloader strategy,
/// docs/bootloader-updates.md).
///
/// `path` is the eMMC's user area. A block device (`/dev/mmcblk0`): its boot partitions are
/// `/dev/mmcblk0boot0` and `boot1`, write-protected by the kernel until `force_ro` in sysfs is
/// cleared (and set again on `close`); the register is read with CMD8 (SEND_EXT_CSD) and written
/// with CMD6 (SWITCH, write byte) through the `MMC_IOC_CMD` ioctl on the user area, which the ROM
/// sees at its next reset. An image file stands for an eMMC in sandboxes and tests (there is no
/// MMC in the test kernel, and no eMMC in QEMU): its boot partitions are the files `<path>boot0`
/// and `<path>boot1`, its register the 512-byte file `<path>.ext_csd`, written with one synced
/// write of the byte (a CMD6 switch is atomic in the device).
public final class EMMCBootArea {
    /// EXT_CSD[179] PARTITION_CONFIG: bit 6 BOOT_ACK, bits 5:3 BOOT_PARTITION_ENABLE (1 boot0,
    /// 2 boot1, 7 user area, 0 not enabled), bits 2:0 PARTITION_ACCESS (JEDEC JESD84-B51 §7.4.69).
    public static let partitionConfigIndex = 179

    /// The boot partition (0 or 1) a PARTITION_CONFIG value enables, or nil.
    public static func bootPartition(enabledBy value: UInt8) -> Int? {
        switch (value >> 3) & 7 {
        case 1: 0
        case 2: 1
        default: nil
        }
    }

    /// `value` with BOOT_PARTITION_ENABLE naming boot partition `index`, BOOT_ACK kept, and
    /// PARTITION_ACCESS 0 (the user area: the command goes through the user area's device).
    public static func partitionConfig(_ value: UInt8, enabling index: Int) -> UInt8 {
        (value & 0x40) | UInt8((index + 1) << 3)
    }

    public let path: String
    /// The EXT_CSD register as 512 bytes: reads return the register, a write of one byte at an
    /// index switches that byte.
    public let register: any BlockTarget
    /// The register when it is a file (the simulation), for the callers that wrap devices.
    public let registerFile: BlockDevice?
    /// boot0 and boot1: opened exclusively for writing with `forWriting`, else for reading.
    public let partitions: [BlockDevice]
    private let command: MMCCommandChannel?
    private var readOnlyToRestore: [String]

    public static func bootPartitionPath(_ path: String, _ index: Int) -> String { "\(path)boot\(index)" }

    /// MMC_IOC_CMD and the size of its struct mmc_ioc_cmd, as compiled here (the tests compare
    /// them with the kernel's documented values).
    public static var commandLayout: (request: UInt, size: Int) {
        (CFerryShims_MMC_IOC_CMD, MemoryLayout<mmc_ioc_cmd>.size)
    }

    /// Opens the boot area of the eMMC whose user area is `path`.
    /// - Throws: `.deviceNotFound` (no boot partitions: not an eMMC), `.permissionDenied`, `.io`,
    ///   `.deviceInUse` (a boot partition held by someone else).
    public static func open(_ path: String, forWriting: Bool) throws(FerryError) -> EMMCBootArea {
        let isDevice = (try? BlockDevice.openForReading(path)).map { (device) -> Bool in
            defer { try? device.close() }
            return device.kind == .blockDevice
        }
        guard let isDevice else {
            throw FerryError(code: .deviceNotFound, message: "eMMC '\(path)' does not exist")
        }
        for index in 0...1 where !TextFile.exists(bootPartitionPath(path, index)) {
            throw FerryError(
                code: .deviceNotFound,
                message:
                    "'\(path)' has no boot partition '\(bootPartitionPath(path, index))': not an eMMC with boot partitions"
            )
        }
        var cleared: [String] = []
        do throws(FerryError) {
            let register: any BlockTarget
            var registerFile: BlockDevice? = nil
            var channel: MMCCommandChannel? = nil
            if isDevice {
                channel = try MMCCommandChannel(path: path)
                register = ExtCSDRegister(channel: channel!)
            } else {
                guard TextFile.exists("\(path).ext_csd") else {
                    throw FerryError(
                        code: .deviceNotFound,
                        message: "the simulated eMMC '\(path)' has no register file '\(path).ext_csd'")
                }
                let file =
                    forWriting
                    ? try BlockDevice.openSharedForWriting("\(path).ext_csd")
                    : try BlockDevice.openForReading("\(path).ext_csd")
                registerFile = file
                register = file
            }
            var partitions: [BlockDevice] = []
            for index in 0...1 {
                let partition = bootPartitionPath(path, index)
                if forWriting {
                    if isDevice, try clearReadOnly(partition) { cleared.append(partition) }
                    partitions.append(try BlockDevice.openExclusive(partition))
                } else {
                    partitions.append(try BlockDevice.openForReading(partition))
                }
            }
            return EMMCBootArea(
                path: path, register: register, registerFile: registerFile, partitions: partitions, command: channel,
                readOnlyToRestore: cleared)
        } catch {
            for partition in cleared { setReadOnly(partition, true) }
            throw error
        }
    }

    private init(
        path: String, register: any BlockTarget, registerFile: BlockDevice?, partitions: [BlockDevice],
        command: MMCCommandChannel?, readOnlyToRestore: [String]
    ) {
        self.path = path
        self.register = register
        self.registerFile = registerFile
        self.partitions = partitions
        self.command = command
        self.readOnlyToRestore = readOnlyToRestore
    }

    deinit { close() }

    /// Closes everything and write-protects again the boot partitions it unprotected.
    public func close() {
        for partition in partitions { try? partition.close() }
        try? registerFile?.close()
        command?.close()
        for partition in readOnlyToRestore { Self.setReadOnly(partition, true) }
        readOnlyToRestore = []
    }

    /// The smaller boot partition's size: the largest bootloader it takes.
    public var capacity: Int64 { partitions.map(\.byteCount).min() ?? 0 }

    /// The sysfs `force_ro` of a boot partition device (`/dev/mmcblk0boot1`).
    static func forceReadOnlyPath(_ partition: String) -> String {
        "/sys/class/block/\(partition.split(separator: "/").last ?? "")/force_ro"
    }

    /// Clears `force_ro`; returns whether it was set.
    private static func clearReadOnly(_ partition: String) throws(FerryError) -> Bool {
        let attribute = forceReadOnlyPath(partition)
        guard TextFile.attribute(attribute) == "1" else { return false }
        guard setReadOnly(partition, false) else {
            throw FerryError(
                code: .permissionDenied,
                message: "cannot clear '\(attribute)': the boot partition stays write-protected")
        }
        return true
    }

    @discardableResult
    private static func setReadOnly(_ partition: String, _ readOnly: Bool) -> Bool {
        do {
            let fd = try FileDescriptor.open(
                FilePath(forceReadOnlyPath(partition)), .writeOnly, options: [.closeOnExec])
            defer { try? fd.close() }
            let text = readOnly ? "1" : "0"
            return try fd.writeAll(text.utf8) == 1
        } catch {
            return false
        }
    }
}

/// The user area's device, open for MMC_IOC_CMD.
final class MMCCommandChannel {
    let path: String
    private var fd: FileDescriptor?

    init(path: String) throws(FerryError) {
        self.path = path
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec])
        } catch {
            throw FerryError.syscall("opening", errno: error as? Errno ?? .ioError, path: path)
        }
    }

    func close() {
        try? fd?.close()
        fd = nil
    }

    /// CMD8 SEND_EXT_CSD: the 512-byte register (R1, data read; flags MMC_RSP_SPI_R1 |
    /// MMC_RSP_R1 | MMC_CMD_ADTC).
    func readExtCSD() throws(FerryError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        var command = mmc_ioc_cmd()
        command.opcode = 8
        command.flags = 0xB5
        command.blksz = 512
        command.blocks = 1
        command.data_ptr = UInt64(UInt(bitPattern: buffer.baseAddress))
        try issue(&command, what: "reading EXT_CSD (CMD8)")
        let bytes = Array(buffer)
        return bytes
    }

    /// CMD6 SWITCH, access "write byte": EXT_CSD[index] = value (R1b; flags MMC_RSP_SPI_R1B |
    /// MMC_RSP_R1B | MMC_CMD_AC). The device is busy until the byte is written.
    func switchByte(index: Int, value: UInt8) throws(FerryError) {
        var command = mmc_ioc_cmd()
        command.write_flag = 1
        command.opcode = 6
        command.arg = (3 << 24) | (UInt32(index) << 16) | (UInt32(value) << 8) | 1
        command.flags = 0x49D
        command.cmd_timeout_ms = 5000
        try issue(&command, what: "writing EXT_CSD[\(index)] (CMD6)")
    }

    private func issue(_ command: inout mmc_ioc_cmd, what: String) throws(FerryError) {
        guard let fd else { throw FerryError(code: .internal, message: "'\(path)' is closed") }
        do { try fd.ioctl(CFerryShims_MMC_IOC_CMD, &command) } catch {
            throw .syscall(what, errno: error, path: path)
        }
    }
}

/// EXT_CSD as a 512-byte `BlockTarget`: reads issue CMD8; a write switches each byte it covers
/// with CMD6 (the only writable fields are single bytes); a sync has nothing to do (CMD6 returns
/// once the device has written the byte).
final class ExtCSDRegister: BlockTarget {
    let channel: MMCCommandChannel
    init(channel: MMCCommandChannel) { self.channel = channel }

    var byteCount: Int64 { 512 }
    var logicalSectorSize: Int { 1 }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        guard offset >= 0, offset + Int64(buffer.count) <= 512 else {
            throw FerryError(code: .io, message: "EXT_CSD has 512 bytes; read at \(offset) of \(buffer.count)")
        }
        let register = try channel.readExtCSD()
        for index in 0..<buffer.count { buffer[index] = register[Int(offset) + index] }
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        guard offset >= 0, offset + Int64(bytes.count) <= 512 else {
            throw FerryError(code: .io, message: "EXT_CSD has 512 bytes; write at \(offset) of \(bytes.count)")
        }
        for (index, byte) in bytes.enumerated() { try channel.switchByte(index: Int(offset) + index, value: byte) }
    }

    func synchronize() throws(FerryError) {}

    func zeroOut(_ range: Range<Int64>) throws(FerryError) {
        throw FerryError(code: .internal, message: "EXT_CSD cannot be zeroed")
    }
}
