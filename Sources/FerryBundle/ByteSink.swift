import FerrySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A sequential destination for bytes: a bundle file being created, a buffer in memory.
///
/// Writers never seek, so one code path serves files, pipes and (later) decoders chained behind
/// each other. The counterpart of `ByteSource`.
public protocol ByteSink: AnyObject {
    /// Writes all of `bytes`, or throws.
    func write(_ bytes: UnsafeRawBufferPointer) throws(FerryError)
}

extension ByteSink {
    /// Writes all of `bytes`, or throws.
    public func write(_ bytes: [UInt8]) throws(FerryError) {
        try bytes.withTypedUnsafeBytes { (buffer) throws(FerryError) in try write(buffer) }
    }
}

/// A `ByteSink` that creates (or truncates) a regular file and appends to it.
///
/// Call ``finish()`` when done: it makes the file durable and closes it. A sink that is dropped
/// without `finish()` closes its descriptor without syncing (the file is then incomplete, and the
/// caller is expected to remove it).
public final class FileByteSink: ByteSink {
    /// The path being written.
    public let path: String
    /// Bytes written so far.
    public private(set) var byteCount: Int64 = 0
    private var descriptor: FileDescriptor?

    /// Creates `path`, or truncates it if it exists.
    ///
    /// - Parameter permissions: mode of a newly created file. The default is 0644.
    /// - Throws: `.deviceNotFound` (missing directory), `.permissionDenied`, `.noSpace`, `.io`.
    ///
    /// The corresponding C function is `open(2)` with `O_CREAT | O_TRUNC`.
    /// - Parameter exclusive: fail if `path` exists (also as a symbolic link: never followed).
    public init(
        path: String, permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead], exclusive: Bool = false
    ) throws(FerryError) {
        self.path = path
        do {
            descriptor = try FileDescriptor.open(
                FilePath(path), .writeOnly,
                options: exclusive
                    ? [.create, .exclusiveCreate, .noFollow, .closeOnExec] : [.create, .truncate, .closeOnExec],
                permissions: permissions)
        } catch {
            throw .syscall("creating", errno: error as? Errno ?? .ioError, path: path)
        }
    }

    deinit {
        if let descriptor { try? descriptor.close() }
    }

    /// Appends all of `bytes` to the file.
    ///
    /// The corresponding C function is `write(2)`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(FerryError) {
        guard let descriptor else { preconditionFailure("Ferry bug: writing to '\(path)' after finish()") }
        var done = 0
        while done < bytes.count {
            do {
                done += try descriptor.write(UnsafeRawBufferPointer(rebasing: bytes[done...]))
            } catch {
                throw .syscall(
                    "writing \(bytes.count - done) bytes at offset \(byteCount + Int64(done)) of",
                    errno: error as? Errno ?? .ioError, path: path)
            }
        }
        byteCount += Int64(bytes.count)
    }

    /// Flushes the file to stable storage and closes it. Safe to call twice.
    ///
    /// A sync failure is reported and the descriptor is still closed.
    /// - Throws: `.io`, `.noSpace` (delayed allocation failing at sync time).
    ///
    /// The corresponding C functions are `fsync(2)` and `close(2)`.
    public func finish() throws(FerryError) {
        guard let descriptor else { return }
        self.descriptor = nil
        let syncError = FileSystem.synchronize(descriptor)
        do {
            try descriptor.close()
        } catch let error as Errno where error == .interrupted {
            // EINTR on close: the descriptor is gone either way; never retry (it may be reused).
        } catch {
            if syncError == nil { throw .syscall("closing", errno: error as? Errno ?? .ioError, path: path) }
        }
        if let syncError { throw .syscall("synchronizing", errno: syncError, path: path) }
    }
}

/// A `ByteSink` collecting everything in memory (tests, small documents).
public final class MemoryByteSink: ByteSink {
    /// Everything written so far.
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer) throws(FerryError) {
        self.bytes.append(contentsOf: bytes)
    }
}
