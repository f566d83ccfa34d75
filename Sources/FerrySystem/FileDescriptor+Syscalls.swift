// Calls swift-system does not offer, as internal extensions (never public members on its types).
import CFerryShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension FileDescriptor {
    /// Flushes written data and metadata of the file to stable storage.
    ///
    /// The corresponding C function is `fsync(2)`.
    func synchronize(retryOnInterrupt: Bool = true) throws(Errno) {
        _ = try valueOrErrno(retryOnInterrupt: retryOnInterrupt) { system_fsync(rawValue) }
    }

    /// Flushes written data (and only the metadata needed to read it back) to stable storage.
    ///
    /// The corresponding C function is `fdatasync(2)`.
    func synchronizeData(retryOnInterrupt: Bool = true) throws(Errno) {
        _ = try valueOrErrno(retryOnInterrupt: retryOnInterrupt) { system_fdatasync(rawValue) }
    }

    /// Issues an ioctl whose argument is a pointer to `value`.
    ///
    /// The corresponding C function is `ioctl(2)`.
    func ioctl<T>(_ request: UInt, _ value: inout T, retryOnInterrupt: Bool = true) throws(Errno) {
        let fd = rawValue
        _ = try withUnsafeMutablePointer(to: &value) { (pointer) throws(Errno) -> CInt in
            try valueOrErrno(retryOnInterrupt: retryOnInterrupt) { system_ioctl(fd, request, pointer) }
        }
    }

    /// Issues an ioctl whose argument is an integer (or none).
    ///
    /// The corresponding C function is `ioctl(2)`.
    @discardableResult
    func ioctl(_ request: UInt, value: UInt = 0, retryOnInterrupt: Bool = true) throws(Errno) -> CInt {
        try valueOrErrno(retryOnInterrupt: retryOnInterrupt) { system_ioctl(rawValue, request, value: value) }
    }

    /// Applies or removes an advisory lock on the whole file.
    ///
    /// The corresponding C function is `flock(2)`.
    func flock(_ operation: CInt, retryOnInterrupt: Bool = true) throws(Errno) {
        _ = try valueOrErrno(retryOnInterrupt: retryOnInterrupt) { system_flock(rawValue, operation) }
    }

    /// Manipulates the allocated space of a file (zero a range, punch a hole).
    ///
    /// The corresponding C function is `fallocate(2)`.
    func allocate(mode: CInt, offset: Int64, length: Int64) throws(Errno) {
        _ = try valueOrErrno { system_fallocate(rawValue, mode, offset, length) }
    }

    /// The file's status.
    ///
    /// The corresponding C function is `fstat(2)`.
    func fileStatus() throws(Errno) -> Glibc.stat {
        var buffer = Glibc.stat()
        _ = try valueOrErrno { system_fstat(rawValue, &buffer) }
        return buffer
    }

    /// Closes the descriptor once: `EINTR` counts as closed and is never retried (the descriptor
    /// may already be reused); other errors are reported.
    ///
    /// The corresponding C function is `close(2)`.
    func closeOnce() throws(Errno) {
        if system_close(rawValue) == -1 {
            let error = currentErrno
            precondition(error != .badFileDescriptor, "Ferry bug: closing a descriptor that is not open")
            if error != .interrupted { throw error }
        }
    }
}

/// File type tests on `st_mode` (the C macros `S_ISBLK`/`S_ISREG` do not import).
extension Glibc.stat {
    var isBlockDevice: Bool { (st_mode & S_IFMT) == S_IFBLK }
    var isRegularFile: Bool { (st_mode & S_IFMT) == S_IFREG }
    var isDirectory: Bool { (st_mode & S_IFMT) == S_IFDIR }
}
