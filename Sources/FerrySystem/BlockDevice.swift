import CFerryShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The storage an image is written to: what installers, verifiers and tests talk to.
///
/// `BlockDevice` is the real one (a block device, an image file, or a window of an image file);
/// tests add fault-injecting ones.
public protocol BlockTarget: AnyObject {
    /// Bytes addressable through this target.
    var byteCount: Int64 { get }
    /// The smallest unit the device writes (512 or 4096); image files report 512.
    var logicalSectorSize: Int { get }
    /// Reads exactly `buffer.count` bytes at `offset`, or throws.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError)
    /// Writes all of `bytes` at `offset`, or throws.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError)
    /// Makes everything written so far durable.
    func synchronize() throws(FerryError)
    /// Makes `range` read as zeros, letting the device do the work where it can.
    func zeroOut(_ range: Range<Int64>) throws(FerryError)
}

/// A block device or an image file, opened for reading or exclusively for writing.
///
/// One abstraction for both, so installers and tests share code: sizes come from
/// `ioctl(BLKGETSIZE64)` or `fstat`, exclusivity from `O_EXCL` (block devices: fails with `EBUSY`
/// while mounted or claimed) or `flock` (image files), and zeroing from `BLKZEROOUT` or `fallocate`.
/// A `BlockDevice` may also be a *window* of an image file (a partition of a disk image read
/// without a loop device): offsets are then relative to the window and cannot leave it.
public final class BlockDevice: BlockTarget {
    public enum Kind: String, Sendable {
        case blockDevice = "block device"
        case imageFile = "image file"
    }

    /// The path that was opened.
    public let path: String
    public let kind: Kind
    public let isWritable: Bool
    public let byteCount: Int64
    public let logicalSectorSize: Int
    /// Offset of the window inside the underlying file (0 for a whole device or file).
    public let windowOffset: Int64
    /// The device number (`st_rdev`) of a block device; nil for image files.
    public let deviceNumber: UInt64?
    private var descriptor: FileDescriptor?
    /// A second descriptor with `O_DIRECT` for aligned writes (``enableDirectWrites()``).
    private var directDescriptor: FileDescriptor?

    private init(
        path: String, kind: Kind, isWritable: Bool, byteCount: Int64, sectorSize: Int,
        windowOffset: Int64, deviceNumber: UInt64?, descriptor: FileDescriptor
    ) {
        self.path = path
        self.kind = kind
        self.isWritable = isWritable
        self.byteCount = byteCount
        self.logicalSectorSize = sectorSize
        self.windowOffset = windowOffset
        self.deviceNumber = deviceNumber
        self.descriptor = descriptor
    }

    deinit { try? close() }

    /// Opens a device or image file for reading.
    ///
    /// - Parameters:
    ///   - path: a block device or a regular file.
    ///   - window: a byte range of the file to expose instead of the whole file.
    ///   - direct: bypass the page cache (`O_DIRECT`); reads must then be sector-aligned.
    /// - Throws: `.deviceNotFound`, `.permissionDenied`, `.io`, `.deviceTooSmall` (window past the end).
    public static func openForReading(
        _ path: String, window: Range<Int64>? = nil, direct: Bool = false
    ) throws(FerryError) -> BlockDevice {
        var options: FileDescriptor.OpenOptions = [.closeOnExec]
        if direct { options.insert(FileDescriptor.OpenOptions(rawValue: CFerryShims_O_DIRECT)) }
        return try open(path, mode: .readOnly, options: options, window: window, exclusive: false)
    }

    /// Opens a device or image file exclusively for writing.
    ///
    /// Block devices are opened with `O_EXCL`, which the kernel refuses with `EBUSY` while the
    /// device (or a partition of it) is mounted or claimed; image files are locked with
    /// `flock(LOCK_EX|LOCK_NB)`. Callers decide beforehand whether the device may be written at
    /// all (`SlotGuard`); this is the only place that opens a device for writing.
    /// - Throws: `.deviceInUse` when someone else holds it, `.deviceNotFound`, `.permissionDenied`, `.io`.
    public static func openExclusive(_ path: String, window: Range<Int64>? = nil) throws(FerryError) -> BlockDevice {
        try open(path, mode: .readWrite, options: [.closeOnExec], window: window, exclusive: true)
    }

    /// Opens a device or image file for writing *without* an exclusive claim.
    ///
    /// Only for boot environments: they live on a disk whose partitions are mounted (so `O_EXCL`
    /// on it would fail) and outside every slot. Never use it for a slot.
    /// - Throws: `.deviceNotFound`, `.permissionDenied`, `.io`.
    public static func openSharedForWriting(_ path: String) throws(FerryError) -> BlockDevice {
        try open(path, mode: .readWrite, options: [.closeOnExec], window: nil, exclusive: false)
    }

    private static func open(
        _ openPath: String, mode: FileDescriptor.AccessMode, options: FileDescriptor.OpenOptions,
        window: Range<Int64>?, exclusive: Bool, displayPath: String? = nil
    ) throws(FerryError) -> BlockDevice {
        // What messages and callers see (the descriptor path of a reopened device is no name).
        let path = displayPath ?? openPath
        let fd: FileDescriptor
        do {
            // Probe the type first: O_EXCL means "exclusive open" only for block devices.
            let status = try fileStatus(path: openPath)
            var openOptions = options
            if exclusive && status.isBlockDevice { openOptions.insert(.exclusiveCreate) }
            guard status.isBlockDevice || status.isRegularFile else {
                throw FerryError(
                    code: .deviceNotFound, message: "'\(path)' is neither a block device nor a regular file")
            }
            fd = try FileDescriptor.open(FilePath(openPath), mode, options: openOptions)
        } catch let error as FerryError {
            throw error
        } catch let errno as Errno {
            throw .syscall(exclusive ? "opening for writing" : "opening", errno: errno, path: path)
        } catch {
            throw FerryError(code: .internal, message: "opening '\(path)': \(error)")
        }
        do {
            let status = try fd.fileStatus()
            let kind: Kind = status.isBlockDevice ? .blockDevice : .imageFile
            if exclusive && kind == .imageFile {
                do {
                    try fd.flock(LOCK_EX | LOCK_NB)
                } catch {
                    throw FerryError(
                        code: .deviceInUse, message: "'\(path)' is locked by another process", cause: error)
                }
            }
            var size: Int64
            var sectorSize = 512
            var deviceNumber: UInt64? = nil
            if kind == .blockDevice {
                var bytes: UInt64 = 0
                do { try fd.ioctl(CFerryShims_BLKGETSIZE64, &bytes) } catch {
                    throw FerryError.syscall("reading the size (BLKGETSIZE64) of", errno: error, path: path)
                }
                var sector: CInt = 512
                do { try fd.ioctl(CFerryShims_BLKSSZGET, &sector) } catch {
                    throw FerryError.syscall("reading the sector size (BLKSSZGET) of", errno: error, path: path)
                }
                size = Int64(bytes)
                sectorSize = Int(sector)
                deviceNumber = UInt64(status.st_rdev)
            } else {
                size = Int64(status.st_size)
            }
            var offset: Int64 = 0
            if let window {
                guard window.lowerBound >= 0, window.upperBound <= size else {
                    throw FerryError(
                        code: .deviceTooSmall,
                        message:
                            "'\(path)' is \(size) bytes, too small for the range \(window.lowerBound)..<\(window.upperBound)"
                    )
                }
                offset = window.lowerBound
                size = window.upperBound - window.lowerBound
            }
            return BlockDevice(
                path: path, kind: kind, isWritable: mode == .readWrite, byteCount: size, sectorSize: sectorSize,
                windowOffset: offset, deviceNumber: deviceNumber, descriptor: fd)
        } catch let error as FerryError {
            try? fd.closeOnce()
            throw error
        } catch {
            try? fd.closeOnce()
            throw FerryError.syscall("inspecting", errno: error as? Errno ?? .ioError, path: path)
        }
    }

    private var fd: FileDescriptor {
        guard let descriptor else { preconditionFailure("Ferry bug: using closed device \(path)") }
        return descriptor
    }

    /// The raw descriptor, for libblkid which reads through it.
    var rawDescriptor: CInt { fd.rawValue }

    private func checkRange(_ offset: Int64, _ count: Int, _ verb: String) throws(FerryError) {
        guard offset >= 0, count >= 0, offset <= byteCount, Int64(count) <= byteCount - offset else {
            throw FerryError(
                code: .deviceTooSmall,
                message:
                    "\(verb) \(count) bytes at offset \(offset) of '\(path)' would pass its end (\(byteCount) bytes)")
        }
    }

    /// Reads exactly `buffer.count` bytes at `offset`.
    ///
    /// The corresponding C function is `pread(2)`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(FerryError) {
        try checkRange(offset, buffer.count, "reading")
        var done = 0
        while done < buffer.count {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            let count: Int
            do {
                count = try fd.read(fromAbsoluteOffset: windowOffset + offset + Int64(done), into: chunk)
            } catch {
                throw FerryError.syscall(
                    "reading \(chunk.count) bytes at offset \(offset + Int64(done)) of",
                    errno: error as? Errno ?? .ioError,
                    path: path)
            }
            if count == 0 {
                throw FerryError(
                    code: .io, message: "reading '\(path)' ended early at offset \(offset + Int64(done))")
            }
            done += count
        }
    }

    /// Writes all of `bytes` at `offset`.
    ///
    /// With ``enableDirectWrites()``, writes whose address, offset and length are whole sectors go
    /// through the direct descriptor; the rest, and every write once the device called a direct
    /// write invalid, through the page cache. The kernel keeps the two coherent, and
    /// ``synchronize()`` makes both durable (it flushes the device's write cache either way).
    ///
    /// The corresponding C function is `pwrite(2)`.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(FerryError) {
        precondition(isWritable, "Ferry bug: writing to '\(path)' opened read-only")
        try checkRange(offset, bytes.count, "writing")
        IOTrace.record(.write(path: path, offset: windowOffset + offset, bytes: Array(bytes)))
        if let direct = directDescriptor, isSectorAligned(bytes, windowOffset + offset) {
            do {
                var done = 0
                while done < bytes.count {
                    done += try direct.write(
                        toAbsoluteOffset: windowOffset + offset + Int64(done),
                        UnsafeRawBufferPointer(rebasing: bytes[done...]))
                }
                return
            } catch {
                let errno = error as? Errno ?? .ioError
                guard errno == .invalidArgument else {
                    throw FerryError.syscall(
                        "writing \(bytes.count) bytes at offset \(offset) of", errno: errno, path: path)
                }
                // Direct I/O refused after all (alignment rules stricter than the sector size):
                // the buffered write below writes every byte again.
                closeDirectWrites()
            }
        }
        var done = 0
        while done < bytes.count {
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[done...])
            do {
                done += try fd.write(toAbsoluteOffset: windowOffset + offset + Int64(done), chunk)
            } catch {
                throw FerryError.syscall(
                    "writing \(chunk.count) bytes at offset \(offset + Int64(done)) of",
                    errno: error as? Errno ?? .ioError,
                    path: path)
            }
        }
    }

    /// Lets aligned writes bypass the page cache (`O_DIRECT`, through a second descriptor on the
    /// same open file): no copy into cached pages that writeback copies out again and a read-back
    /// must drop. Returns false, and changes nothing, where the file system refuses direct I/O.
    @discardableResult
    public func enableDirectWrites() -> Bool {
        precondition(isWritable, "Ferry bug: direct writes to '\(path)' opened read-only")
        if directDescriptor != nil { return true }
        directDescriptor = try? FileDescriptor.open(
            FilePath("/proc/self/fd/\(fd.rawValue)"), .writeOnly,
            options: [.closeOnExec, FileDescriptor.OpenOptions(rawValue: CFerryShims_O_DIRECT)])
        return directDescriptor != nil
    }

    private func isSectorAligned(_ bytes: UnsafeRawBufferPointer, _ absoluteOffset: Int64) -> Bool {
        let sector = max(logicalSectorSize, 512)
        guard let address = bytes.baseAddress else { return false }
        return Int(bitPattern: address) % sector == 0 && absoluteOffset % Int64(sector) == 0
            && bytes.count % sector == 0
    }

    private func closeDirectWrites() {
        _ = try? directDescriptor?.close()
        directDescriptor = nil
    }

    /// Flushes data and metadata to stable storage. A failure here is fatal for an install.
    ///
    /// The corresponding C function is `fsync(2)`.
    public func synchronize() throws(FerryError) {
        do { try fd.synchronize() } catch { throw .syscall("synchronizing", errno: error, path: path) }
        IOTrace.record(.sync(path: path))
    }

    /// Flushes data (not all metadata) to stable storage.
    ///
    /// The corresponding C function is `fdatasync(2)`.
    public func synchronizeData() throws(FerryError) {
        do { try fd.synchronizeData() } catch { throw .syscall("synchronizing", errno: error, path: path) }
        IOTrace.record(.sync(path: path))
    }

    /// A second, read-only descriptor on the very same device or file (and window) that bypasses
    /// the page cache (`O_DIRECT`): what a read-back reads comes from the medium, not from pages
    /// this process wrote. Reads through it must be aligned to the logical sector size, in
    /// offset, length and buffer address. Nil where the file system refuses direct I/O (then read
    /// through this descriptor after ``dropCaches(_:)``).
    ///
    /// Opened through `/proc/self/fd`, so it cannot be another file than this one.
    public func directReader() -> BlockDevice? {
        let window = windowOffset..<(windowOffset + byteCount)
        return try? BlockDevice.open(
            "/proc/self/fd/\(fd.rawValue)", mode: .readOnly,
            options: [.closeOnExec, FileDescriptor.OpenOptions(rawValue: CFerryShims_O_DIRECT)], window: window,
            exclusive: false, displayPath: path)
    }

    /// Drops the cached pages of the device so the next reads come from the medium.
    ///
    /// Block devices: `ioctl(BLKFLSBUF)` (needs CAP_SYS_ADMIN). Image files: `posix_fadvise(DONTNEED)`
    /// after a sync. Read-back verification should also open with `direct: true` where it can.
    /// The corresponding C functions are `ioctl(BLKFLSBUF)` and `posix_fadvise(2)`.
    public func dropCaches() throws(FerryError) {
        try synchronize()
        if kind == .blockDevice {
            do { try fd.ioctl(CFerryShims_BLKFLSBUF) } catch {
                throw .syscall("flushing the buffer cache (BLKFLSBUF) of", errno: error, path: path)
            }
        } else {
            let result = posix_fadvise(fd.rawValue, off_t(windowOffset), off_t(byteCount), POSIX_FADV_DONTNEED)
            if result != 0 { throw .syscall("dropping cached pages of", errno: Errno(rawValue: result), path: path) }
        }
    }

    /// Drops the cached pages of `range`, which the caller synced before, so the next reads of it
    /// come from the medium. Safe while other ranges are being written through the same device.
    ///
    /// The corresponding C function is `posix_fadvise(2)` (`POSIX_FADV_DONTNEED`), which drops clean
    /// pages of a block device's buffer cache as of an image file's page cache.
    public func dropCaches(_ range: Range<Int64>) throws(FerryError) {
        try checkRange(range.lowerBound, Int(range.count), "dropping cached pages of")
        if range.isEmpty { return }
        let result = posix_fadvise(
            fd.rawValue, off_t(windowOffset + range.lowerBound), off_t(range.count), POSIX_FADV_DONTNEED)
        if result != 0 { throw .syscall("dropping cached pages of", errno: Errno(rawValue: result), path: path) }
    }

    /// Tells the device that `range` is no longer needed; its contents become undefined.
    ///
    /// The corresponding C functions are `ioctl(BLKDISCARD)` and `fallocate(PUNCH_HOLE)`.
    public func discard(_ range: Range<Int64>) throws(FerryError) {
        precondition(isWritable, "Ferry bug: discarding on '\(path)' opened read-only")
        try checkRange(range.lowerBound, Int(range.count), "discarding")
        if range.isEmpty { return }
        do {
            if kind == .blockDevice {
                var span: (UInt64, UInt64) = (UInt64(windowOffset + range.lowerBound), UInt64(range.count))
                try fd.ioctl(CFerryShims_BLKDISCARD, &span)
            } else {
                try fd.allocate(
                    mode: CFerryShims_FALLOC_FL_PUNCH_HOLE | CFerryShims_FALLOC_FL_KEEP_SIZE,
                    offset: windowOffset + range.lowerBound, length: Int64(range.count))
            }
        } catch {
            throw .syscall("discarding \(range.count) bytes at offset \(range.lowerBound) of", errno: error, path: path)
        }
    }

    /// Makes `range` read as zeros, by the device where it can (`BLKZEROOUT`, or `fallocate`
    /// punching a hole in an image file), otherwise by writing zeros.
    ///
    /// The corresponding C functions are `ioctl(BLKZEROOUT)` and `fallocate(2)`.
    public func zeroOut(_ range: Range<Int64>) throws(FerryError) {
        precondition(isWritable, "Ferry bug: zeroing on '\(path)' opened read-only")
        try checkRange(range.lowerBound, Int(range.count), "zeroing")
        if range.isEmpty { return }
        let absolute = windowOffset + range.lowerBound
        IOTrace.record(.zero(path: path, offset: absolute, count: Int64(range.count)))
        do {
            if kind == .blockDevice {
                var span: (UInt64, UInt64) = (UInt64(absolute), UInt64(range.count))
                try fd.ioctl(CFerryShims_BLKZEROOUT, &span)
            } else {
                try fd.allocate(
                    mode: CFerryShims_FALLOC_FL_PUNCH_HOLE | CFerryShims_FALLOC_FL_KEEP_SIZE,
                    offset: absolute, length: Int64(range.count))
            }
            return
        } catch let error
            where error == .notSupported || error == .inappropriateIOCTLForDevice
            || error == .operationNotSupportedByDevice || error == .invalidArgument
        {
            // The device cannot zero by itself (or not at this alignment): write zeros below.
        } catch {
            throw .syscall("zeroing \(range.count) bytes at offset \(range.lowerBound) of", errno: error, path: path)
        }
        try writeZeros(range)
    }

    private func writeZeros(_ range: Range<Int64>) throws(FerryError) {
        let chunkSize = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var offset = range.lowerBound
        while offset < range.upperBound {
            let count = Int(min(Int64(chunkSize), range.upperBound - offset))
            try write(UnsafeRawBufferPointer(rebasing: zeros[..<count]), at: offset)
            offset += Int64(count)
        }
    }

    /// Closes the device (and so releases its exclusive claim or lock). Safe to call twice.
    ///
    /// The corresponding C function is `close(2)`.
    public func close() throws(FerryError) {
        closeDirectWrites()
        guard let descriptor else { return }
        self.descriptor = nil
        // Unlock explicitly: a child spawned by another thread holds a copy of this descriptor until
        // its exec closes it, and a flock lives until the last copy is closed, so close alone could
        // leave the image file locked for a moment after close() returned.
        if kind == .imageFile && isWritable { _ = try? descriptor.flock(LOCK_UN) }
        do { try descriptor.closeOnce() } catch { throw .syscall("closing", errno: error, path: path) }
    }
}

/// `stat(2)` of a path, mapping errors to Errno.
func fileStatus(path: String) throws(Errno) -> Glibc.stat {
    var buffer = Glibc.stat()
    let result = path.withCString { system_stat($0, &buffer) }
    if result == -1 { throw currentErrno }
    return buffer
}

extension BlockTarget {
    /// Reads `count` bytes at `offset` into a new array.
    public func read(at offset: Int64, count: Int) throws(FerryError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        defer { buffer.deallocate() }
        try read(into: buffer, at: offset)
        return Array(buffer)
    }

    /// Writes all of `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: Int64) throws(FerryError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        try write(UnsafeRawBufferPointer(buffer), at: offset)
    }
}
