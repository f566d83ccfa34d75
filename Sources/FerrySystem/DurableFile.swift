import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Crash-safe replacement of small files (state files, file boot environments).
///
/// The new contents go to a temporary file in the same directory, which is synced, renamed over
/// the target; then the renamed file and the directory are synced: a power cut at any instant
/// leaves either the complete old file or the complete new one (ARCHITECTURE.md invariant 4).
public enum DurableFile {
    /// Atomically replaces (or creates) `path` with `bytes`.
    ///
    /// - Parameter permissions: mode of the new file (default 0644).
    /// - Throws: `.io`, `.noSpace`, `.permissionDenied`, `.deviceNotFound` (missing directory).
    public static func write(
        _ bytes: some Collection<UInt8>, to path: String,
        permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]
    ) throws(FerryError) {
        let target = FilePath(path)
        let directory = target.removingLastComponent()
        let temporary = directory.appending(".\(target.lastComponent?.string ?? "file").tmp-\(system_getpid())")
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(
                temporary, .writeOnly, options: [.create, .truncate, .closeOnExec], permissions: permissions)
        } catch {
            throw .syscall("creating", errno: error as? Errno ?? .ioError, path: temporary.string)
        }
        var renamed = false
        defer {
            if !renamed { _ = temporary.string.withCString { system_unlink($0) } }
        }
        do {
            let array = Array(bytes)
            var done = 0
            while done < array.count {
                done += try array.withUnsafeBytes { try fd.write(UnsafeRawBufferPointer(rebasing: $0[done...])) }
            }
            try fd.synchronize()
        } catch {
            try? fd.closeOnce()
            throw .syscall("writing", errno: error as? Errno ?? .ioError, path: temporary.string)
        }
        do { try fd.closeOnce() } catch { throw .syscall("closing", errno: error, path: temporary.string) }
        let result = temporary.string.withCString { old in path.withCString { new in system_rename(old, new) } }
        if result == -1 {
            throw .syscall("renaming '\(temporary.string)' over", errno: currentErrno, path: path)
        }
        renamed = true
        IOTrace.record(.replace(path: path, bytes: Array(bytes)))
        // The renamed file itself is synced before its folder. On FAT (vfat) the folder entry of
        // a renamed file is only rewritten with its new first cluster when the file's own inode is
        // written back, while the old file's clusters are freed at once; syncing the folder alone
        // made the freed clusters durable but not the entry, so a power cut in the next seconds
        // left the entry pointing at free clusters (found by a real power cut in QEMU:
        // docs/reliability.md, "Power cuts on a real machine").
        try synchronizeFile(path)
        try synchronizeDirectory(directory.string.isEmpty ? "." : directory.string)
    }

    /// Syncs a file (data and metadata) by path.
    ///
    /// The corresponding C function is `fsync(2)`.
    static func synchronizeFile(_ path: String) throws(FerryError) {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec]) } catch {
            throw .syscall("opening", errno: error as? Errno ?? .ioError, path: path)
        }
        defer { try? fd.closeOnce() }
        do { try fd.synchronize() } catch { throw .syscall("synchronizing", errno: error, path: path) }
        IOTrace.record(.sync(path: path))
    }

    /// Atomically replaces `path` with the UTF-8 bytes of `text`.
    public static func write(_ text: String, to path: String) throws(FerryError) {
        try write(Array(text.utf8), to: path)
    }

    /// Syncs a directory, making renames and new entries in it durable.
    ///
    /// The corresponding C function is `fsync(2)` on the directory.
    public static func synchronizeDirectory(_ path: String) throws(FerryError) {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.directory, .closeOnExec]) } catch {
            throw .syscall("opening directory", errno: error as? Errno ?? .ioError, path: path)
        }
        defer { try? fd.closeOnce() }
        do { try fd.synchronize() } catch { throw .syscall("synchronizing directory", errno: error, path: path) }
        IOTrace.record(.directorySync(path: path))
    }

    /// Creates `path` and missing parents (mode 0755), syncing each parent that gained an entry.
    public static func createDirectory(_ path: String) throws(FerryError) {
        if TextFile.isDirectory(path) { return }
        let filePath = FilePath(path)
        let parent = filePath.removingLastComponent()
        if !parent.isEmpty, parent != filePath { try createDirectory(parent.string) }
        let result = path.withCString { system_mkdir($0, 0o755) }
        if result == -1 {
            let error = currentErrno
            // EEXIST is fine when another process made the directory meanwhile, not when a file is there.
            if error != .fileExists || !TextFile.isDirectory(path) {
                throw .syscall("creating directory", errno: error, path: path)
            }
            return
        }
        try synchronizeDirectory(parent.isEmpty ? "." : parent.string)
    }
}
