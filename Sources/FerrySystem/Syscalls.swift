// The one seam where Ferry calls the C library directly. Convention: `system_foo` wraps `foo`.
// Typed wrappers above it (FileDescriptor+Syscalls.swift) retry EINTR and throw `Errno`.
import CFerryShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always) func system_ioctl(_ fd: CInt, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> CInt {
    CFerryShims_ioctl_pointer(fd, request, argument)
}

@inline(__always) func system_ioctl(_ fd: CInt, _ request: UInt, value: UInt) -> CInt {
    CFerryShims_ioctl_value(fd, request, value)
}

@inline(__always) func system_fsync(_ fd: CInt) -> CInt { fsync(fd) }
@inline(__always) func system_fdatasync(_ fd: CInt) -> CInt { fdatasync(fd) }
@inline(__always) func system_syncfs(_ fd: CInt) -> CInt { CFerryShims_syncfs(fd) }
@inline(__always) func system_flock(_ fd: CInt, _ operation: CInt) -> CInt { flock(fd, operation) }
@inline(__always) func system_fallocate(_ fd: CInt, _ mode: CInt, _ offset: Int64, _ length: Int64) -> CInt {
    CFerryShims_fallocate(fd, mode, offset, length)
}
@inline(__always) func system_open(_ path: UnsafePointer<CChar>, _ flags: CInt, _ mode: mode_t) -> CInt {
    open(path, flags, mode)
}
@inline(__always) func system_close(_ fd: CInt) -> CInt { close(fd) }
@inline(__always) func system_rename(_ old: UnsafePointer<CChar>, _ new: UnsafePointer<CChar>) -> CInt {
    rename(old, new)
}
@inline(__always) func system_unlink(_ path: UnsafePointer<CChar>) -> CInt { unlink(path) }
@inline(__always) func system_mkdir(_ path: UnsafePointer<CChar>, _ mode: mode_t) -> CInt { mkdir(path, mode) }
@inline(__always) func system_stat(_ path: UnsafePointer<CChar>, _ buffer: UnsafeMutablePointer<stat>) -> CInt {
    stat(path, buffer)
}
@inline(__always) func system_fstat(_ fd: CInt, _ buffer: UnsafeMutablePointer<stat>) -> CInt { fstat(fd, buffer) }
@inline(__always) func system_realpath(_ path: UnsafePointer<CChar>) -> UnsafeMutablePointer<CChar>? {
    realpath(path, nil)
}
@inline(__always) func system_getpid() -> pid_t { getpid() }
@inline(__always) func system_geteuid() -> uid_t { geteuid() }

/// Runs `body` until it returns something other than -1 with `EINTR` (unless told not to retry),
/// and turns -1 into the thrown `Errno`. The same shape as swift-system's internal helper.
@inline(__always)
func valueOrErrno<I: FixedWidthInteger>(retryOnInterrupt: Bool = true, _ body: () -> I) throws(Errno) -> I {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: errno)
        if retryOnInterrupt && error == .interrupted { continue }
        // EBADF and EFAULT mean Ferry passed a bad descriptor or buffer: a bug, not an I/O error.
        precondition(error != .badFileDescriptor && error != .badAddress, "Ferry bug: \(error) from a system call")
        throw error
    }
}

/// The current `errno` as a typed value.
var currentErrno: Errno { Errno(rawValue: errno) }

/// Process-wide memory policy for a device: buffers of 256 KiB and more go back to the kernel
/// as soon as they are freed, and the heap is trimmed above 1 MiB. Without it glibc keeps freed
/// large buffers (an LZMA window, a delta operation's data) resident for reuse, which raised
/// `ferry install`'s peak RSS by about 10 MiB. Ferry's hot paths reuse their large buffers, so
/// returning the rest costs no time. Called once, before any command runs.
public enum MemoryPolicy {
    public static func apply() {
        _ = CFerryShims_tune_malloc(256 << 10, 1 << 20)
    }

    /// For the host-side generators (`ferry delta create`, `ferry bundle create`): freed buffers
    /// under 32 MiB (glibc's own upper bound for them) stay in the heap for the next operation
    /// instead of going back to the kernel and being faulted in again, zeroed. On the files
    /// benchmark pair this took a third of `delta create`'s system time (2.7 s to 1.7 s) for
    /// about 100 MiB more peak memory.
    public static func applyForHost() {
        _ = CFerryShims_tune_malloc(32 << 20, 64 << 20)
    }
}
