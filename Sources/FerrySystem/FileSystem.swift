import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Typed file-system calls for the modules above FerrySystem (stores, bundle writing, the CLI):
/// each one a C call, its errors a ``FerryError`` naming the path. Above FerrySystem, no module
/// calls the C library for these itself (`tools/check-code` checks it).
public enum FileSystem {
    /// What `lstat(2)` says a path is (links are not followed).
    public enum Kind: Sendable, Equatable { case file, directory, symbolicLink, other }

    /// This process's id: temporary names carry it (`.<name>.tmp-<pid>`).
    public static var processID: Int32 { system_getpid() }

    /// The kind of `path`, nil when nothing is there.
    public static func kind(of path: String) -> Kind? {
        var info = Glibc.stat()
        guard path.withCString({ lstat($0, &info) }) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK: return .symbolicLink
        default: return .other
        }
    }

    /// The status-change time of `path` in seconds (0 when it cannot be read).
    public static func changeTime(_ path: String) -> Int {
        var info = Glibc.stat()
        guard path.withCString({ lstat($0, &info) }) == 0 else { return 0 }
        return info.st_ctim.tv_sec
    }

    /// Removes a file or link; nothing when there is none.
    public static func remove(_ path: String) throws(FerryError) {
        guard path.withCString({ system_unlink($0) }) == 0 || errno == ENOENT else {
            throw .syscall("removing", errno: currentErrno, path: path)
        }
    }

    /// Removes a file if it can, ignoring any failure (cleanup on the way out of an error).
    public static func removeIfPossible(_ path: String) { _ = path.withCString { system_unlink($0) } }

    /// Renames `from` over `to` (atomically replacing it).
    public static func rename(_ from: String, to: String) throws(FerryError) {
        guard from.withCString({ old in to.withCString { new in system_rename(old, new) } }) == 0 else {
            throw .syscall("renaming '\(from)' to", errno: currentErrno, path: to)
        }
    }

    /// Makes `path` a symbolic link to `target`.
    public static func makeSymbolicLink(_ path: String, to target: String) throws(FerryError) {
        guard symlink(target, path) == 0 else { throw .syscall("creating the link", errno: currentErrno, path: path) }
    }

    /// Makes `path` another name of the existing file `existing`.
    public static func makeHardLink(_ path: String, to existing: String) throws(FerryError) {
        guard link(existing, path) == 0 else {
            throw .syscall("creating the hard link", errno: currentErrno, path: path)
        }
    }

    /// The target of the symbolic link `path`, nil when it is none.
    public static func linkTarget(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Creates one directory with `mode` (its parent must exist).
    public static func makeDirectory(_ path: String, mode: UInt32) throws(FerryError) {
        guard path.withCString({ system_mkdir($0, mode_t(mode)) }) == 0 else {
            throw .syscall("creating the directory", errno: currentErrno, path: path)
        }
    }

    /// Sets the permission bits of `path`.
    public static func setMode(_ path: String, _ mode: UInt32) throws(FerryError) {
        guard chmod(path, mode_t(mode)) == 0 else {
            throw .syscall("setting the mode of", errno: currentErrno, path: path)
        }
    }

    /// The names in directory `path` (without `.` and `..`); empty when it cannot be read.
    public static func entries(_ path: String) -> [String] {
        guard let stream = opendir(path) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// `fsync(2)` of an open file, retried on EINTR; the error, if it failed.
    public static func synchronize(_ descriptor: FileDescriptor) -> Errno? {
        var result: CInt
        repeat { result = system_fsync(descriptor.rawValue) } while result == -1 && errno == EINTR
        return result == -1 ? currentErrno : nil
    }

    /// Removes a tree of files, links and directories (never following a link); nothing when
    /// `path` does not exist.
    public static func removeTree(_ path: String) throws(FerryError) {
        guard let kind = kind(of: path) else { return }
        guard kind == .directory else { return try remove(path) }
        for entry in entries(path) { try removeTree("\(path)/\(entry)") }
        guard rmdir(path) == 0 else { throw .syscall("removing", errno: currentErrno, path: path) }
    }
}
