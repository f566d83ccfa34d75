import CFerryShims
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A loop device backing a disk image file, so that slots inside the image are real block devices.
///
/// Attaching reuses a loop device that already backs the whole file (and then leaves it attached);
/// otherwise it takes a free one with `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` (falling back to
/// `LOOP_SET_FD` + `LOOP_SET_STATUS64` on kernels without it), with `LO_FLAGS_AUTOCLEAR`: the
/// device disappears on the last close, so even a killed Ferry leaves none behind.
///
/// Partitions are never left to the kernel's partition scan (some kernels have no partition-table
/// parsers): Ferry reads the table with libblkid and adds each partition it needs with
/// `ioctl(BLKPG, BLKPG_ADD_PARTITION)`, as `partx -a` does.
public final class LoopDevice {
    /// `/dev/loopN`.
    public let path: String
    public let number: Int
    /// The image file it is backed by.
    public let backingFile: String
    /// Whether this process attached it (and so detaches it); false when an existing one was reused.
    public let isAttachedByUs: Bool
    private var descriptor: FileDescriptor?
    private let logger: Logger

    private init(
        path: String, number: Int, backingFile: String, attachedByUs: Bool, descriptor: FileDescriptor, logger: Logger
    ) {
        self.path = path
        self.number = number
        self.backingFile = backingFile
        self.isAttachedByUs = attachedByUs
        self.descriptor = descriptor
        self.logger = logger
    }

    deinit { try? detach() }

    /// What sysfs says about an attached loop device.
    public struct Info: Sendable, Equatable {
        public var number: Int
        public var backingFile: String
        public var offset: Int64
        public var sizeLimit: Int64
        public var partitionScan: Bool
        public var autoclear: Bool
        public var path: String { "/dev/loop\(number)" }
    }

    /// Every attached loop device, from `/sys/block/loop*/loop/`.
    public static func attached(sysfs: String = "/sys/block") -> [Info] {
        var result: [Info] = []
        guard let directory = opendir(sysfs) else { return result }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            guard name.hasPrefix("loop"), let number = Int(name.dropFirst(4)) else { continue }
            let base = "\(sysfs)/\(name)/loop"
            guard let file = TextFile.attribute("\(base)/backing_file") else { continue }
            result.append(
                Info(
                    number: number, backingFile: file,
                    offset: Int64(TextFile.attribute("\(base)/offset") ?? "0") ?? 0,
                    sizeLimit: Int64(TextFile.attribute("\(base)/sizelimit") ?? "0") ?? 0,
                    partitionScan: TextFile.attribute("\(base)/partscan") == "1",
                    autoclear: TextFile.attribute("\(base)/autoclear") == "1"))
        }
        return result.sorted { $0.number < $1.number }
    }

    /// The attached loop devices whose backing file is `file` (compared by device and inode, so
    /// any path to the same file matches).
    public static func devices(backing file: String) -> [Info] {
        guard let target = try? fileStatus(path: file) else { return [] }
        return attached().filter { info in
            guard let status = try? fileStatus(path: info.backingFile) else { return false }
            return status.st_dev == target.st_dev && status.st_ino == target.st_ino
        }
    }

    /// Attaches `file` as a whole-disk loop device, or reuses one that already backs all of it.
    ///
    /// - Throws: `.loopDevice` when no loop device can be had (no /dev/loop-control, not root),
    ///   `.deviceNotFound` when `file` is missing.
    public static func attach(_ file: String, logger: Logger = Logger(label: "ferry.loop")) throws(FerryError)
        -> LoopDevice
    {
        guard let status = try? fileStatus(path: file), status.isRegularFile else {
            throw FerryError(
                code: .deviceNotFound, message: "disk image '\(file)' does not exist or is not a regular file")
        }
        if let existing = devices(backing: file).first(where: { $0.offset == 0 && $0.sizeLimit == 0 }) {
            return try reuse(existing, file: file, logger: logger)
        }
        let backing: FileDescriptor
        do { backing = try FileDescriptor.open(FilePath(file), .readWrite, options: [.closeOnExec]) } catch {
            throw .syscall("opening disk image", errno: error as? Errno ?? .ioError, path: file)
        }
        defer { try? backing.closeOnce() }
        let control: FileDescriptor
        do { control = try FileDescriptor.open("/dev/loop-control", .readWrite, options: [.closeOnExec]) } catch {
            throw FerryError(
                code: .loopDevice,
                message: "cannot open /dev/loop-control to attach '\(file)' (needs root and the loop driver)",
                cause: error as? Errno)
        }
        defer { try? control.closeOnce() }
        // Another process may take the free device between GET_FREE and CONFIGURE: try again.
        var lastError: Errno = .resourceBusy
        for _ in 0..<16 {
            let number: CInt
            do { number = try control.ioctl(CFerryShims_LOOP_CTL_GET_FREE) } catch {
                throw FerryError(code: .loopDevice, message: "no free loop device for '\(file)'", cause: error)
            }
            let path = "/dev/loop\(number)"
            let loop: FileDescriptor
            do { loop = try openLoopNode(path) } catch {
                lastError = error
                continue
            }
            do {
                try configure(loop, backing: backing, file: file)
                logger.debug("Attached loop device", metadata: ["loop.device": "\(path)", "loop.file": "\(file)"])
                return LoopDevice(
                    path: path, number: Int(number), backingFile: file, attachedByUs: true, descriptor: loop,
                    logger: logger)
            } catch {
                try? loop.closeOnce()
                lastError = error
                if error != .resourceBusy { break }
            }
        }
        throw FerryError(
            code: .loopDevice, message: "attaching '\(file)' to a loop device failed: \(lastError)", cause: lastError)
    }

    private static func openLoopNode(_ path: String) throws(Errno) -> FileDescriptor {
        // The node may appear a moment after LOOP_CTL_GET_FREE created the device.
        for attempt in 0..<50 {
            do { return try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec]) } catch {
                let errno = error as? Errno ?? .ioError
                guard errno == .noSuchFileOrDirectory, attempt < 49 else { throw errno }
                usleep(20_000)
            }
        }
        throw .noSuchFileOrDirectory
    }

    private static func configure(_ loop: FileDescriptor, backing: FileDescriptor, file: String) throws(Errno) {
        var info = loop_info64()
        info.lo_flags = UInt32(LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN)
        withUnsafeMutableBytes(of: &info.lo_file_name) { name in
            let bytes = Array(file.utf8.prefix(name.count - 1))
            name.copyBytes(from: bytes)
        }
        var config = loop_config()
        config.fd = UInt32(backing.rawValue)
        config.info = info
        do {
            try loop.ioctl(CFerryShims_LOOP_CONFIGURE, &config)
        } catch let error where error == .invalidArgument || error == .inappropriateIOCTLForDevice {
            // Kernels before 5.8 have no LOOP_CONFIGURE: set the file, then the flags.
            try loop.ioctl(CFerryShims_LOOP_SET_FD, value: UInt(backing.rawValue))
            do { try loop.ioctl(CFerryShims_LOOP_SET_STATUS64, &info) } catch {
                _ = try? loop.ioctl(CFerryShims_LOOP_CLR_FD)
                throw error
            }
        }
    }

    private static func reuse(_ existing: Info, file: String, logger: Logger) throws(FerryError) -> LoopDevice {
        let loop: FileDescriptor
        do { loop = try FileDescriptor.open(FilePath(existing.path), .readWrite, options: [.closeOnExec]) } catch {
            throw FerryError(
                code: .loopDevice, message: "cannot open existing loop device \(existing.path) backing '\(file)'",
                cause: error as? Errno)
        }
        if !existing.partitionScan {
            // BLKPG needs partitions enabled on the loop device; LOOP_SET_STATUS64 may set PARTSCAN.
            var info = loop_info64()
            do {
                try loop.ioctl(CFerryShims_LOOP_GET_STATUS64, &info)
                info.lo_flags |= UInt32(LO_FLAGS_PARTSCAN)
                try loop.ioctl(CFerryShims_LOOP_SET_STATUS64, &info)
            } catch {
                try? loop.closeOnce()
                throw FerryError(
                    code: .loopDevice, message: "cannot enable partitions on existing loop device \(existing.path)",
                    cause: error)
            }
        }
        logger.debug("Reusing loop device", metadata: ["loop.device": "\(existing.path)", "loop.file": "\(file)"])
        return LoopDevice(
            path: existing.path, number: existing.number, backingFile: file, attachedByUs: false, descriptor: loop,
            logger: logger)
    }

    /// The device node of `partition` on this loop device, adding it with BLKPG if needed.
    ///
    /// An existing partition with the same number must have the same start and size, or Ferry
    /// refuses (someone else's view of the disk differs from the partition table).
    /// - Throws: `.loopDevice` when the kernel refuses, or the node does not appear.
    public func partitionDevice(_ partition: Partition) throws(FerryError) -> String {
        let name = "loop\(number)p\(partition.number)"
        let sysfs = "/sys/block/loop\(number)/\(name)"
        if let start = TextFile.attribute("\(sysfs)/start").flatMap(Int64.init),
            let size = TextFile.attribute("\(sysfs)/size").flatMap(Int64.init)
        {
            guard start * 512 == partition.startOffset, size * 512 == partition.byteCount else {
                throw FerryError(
                    code: .loopDevice,
                    message:
                        "\(path) already has partition \(partition.number) at a different place than the partition table of '\(backingFile)' says"
                )
            }
        } else {
            var entry = blkpg_partition()
            entry.start = partition.startOffset
            entry.length = partition.byteCount
            entry.pno = CInt(partition.number)
            do {
                try withUnsafeMutablePointer(to: &entry) { (pointer) throws(Errno) in
                    var argument = blkpg_ioctl_arg(
                        op: CInt(BLKPG_ADD_PARTITION), flags: 0, datalen: CInt(MemoryLayout<blkpg_partition>.size),
                        data: UnsafeMutableRawPointer(pointer))
                    try fd.ioctl(CFerryShims_BLKPG, &argument)
                }
            } catch let error where error == .resourceBusy {
                // Added concurrently by someone else: fall through and use it if it matches.
                return try partitionDevice(partition)
            } catch {
                throw FerryError(
                    code: .loopDevice,
                    message: "adding partition \(partition.number) to \(path) (BLKPG) failed: \(error)",
                    cause: error)
            }
            logger.debug(
                "Added partition", metadata: ["loop.device": "\(path)", "partition.number": "\(partition.number)"])
        }
        return try waitForNode("/dev/\(name)", sysfs: sysfs)
    }

    /// Waits for devtmpfs (or udev) to create the node; creates it from sysfs' `dev` if /dev is static.
    private func waitForNode(_ node: String, sysfs: String) throws(FerryError) -> String {
        for _ in 0..<100 {
            if let status = try? fileStatus(path: node), status.isBlockDevice { return node }
            usleep(10_000)
        }
        if let numbers = TextFile.attribute("\(sysfs)/dev")?.split(separator: ":"), numbers.count == 2,
            let major = UInt32(numbers[0]), let minor = UInt32(numbers[1])
        {
            if node.withCString({ mknod($0, S_IFBLK | 0o600, deviceNumber(major: major, minor: minor)) }) == 0 {
                return node
            }
        }
        throw FerryError(code: .loopDevice, message: "partition node \(node) did not appear")
    }

    private var fd: FileDescriptor {
        guard let descriptor else { preconditionFailure("Ferry bug: using detached loop device \(path)") }
        return descriptor
    }

    /// Detaches the device if this process attached it (closing it is enough with AUTOCLEAR;
    /// `LOOP_CLR_FD` makes it explicit), and waits until the kernel has let it go. A reused device
    /// stays attached. Safe to call twice.
    public func detach() throws(FerryError) {
        guard let descriptor else { return }
        self.descriptor = nil
        if isAttachedByUs {
            _ = try? descriptor.ioctl(CFerryShims_LOOP_CLR_FD)
        }
        try? descriptor.closeOnce()
        guard isAttachedByUs else { return }
        for _ in 0..<200 {
            if TextFile.attribute("/sys/block/loop\(number)/loop/backing_file") == nil {
                logger.debug("Detached loop device", metadata: ["loop.device": "\(path)"])
                return
            }
            usleep(10_000)
        }
        throw FerryError(
            code: .loopDevice, message: "\(path) is still attached after detaching (still open elsewhere?)")
    }
}

/// `makedev(3)`, which glibc defines as a macro Swift cannot import: the Linux encoding of a
/// device number from its major and minor parts.
func deviceNumber(major: UInt32, minor: UInt32) -> dev_t {
    let major = UInt64(major)
    let minor = UInt64(minor)
    return dev_t(
        ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff))
}

/// The major and minor parts of a Linux device number (`major(3)`/`minor(3)`).
public func deviceNumberParts(_ number: UInt64) -> (major: UInt32, minor: UInt32) {
    let major = ((number >> 32) & 0xffff_f000) | ((number >> 8) & 0xfff)
    let minor = ((number >> 12) & 0xffff_ff00) | (number & 0xff)
    return (UInt32(major), UInt32(minor))
}
