import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An exclusive advisory lock on a file (`flock`), held until `release()` or deinit.
///
/// Ferry takes one global lock in the state directory for every command that writes, so two
/// commands (an install and a `mark`, say) never interleave. The kernel releases the lock when
/// the process dies, so a killed Ferry never leaves a stale lock behind.
public final class FileLock {
    public let path: String
    private var descriptor: FileDescriptor?

    private init(path: String, descriptor: FileDescriptor) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { release() }

    /// Takes the lock, failing at once when another process holds it.
    ///
    /// - Parameter holder: text written into the lock file for the error message of the next
    ///   contender (the command and pid), purely informative.
    /// - Throws: `.lockHeld` naming the holder when the lock is taken; `.io`/`.permissionDenied` otherwise.
    /// The corresponding C function is `flock(LOCK_EX | LOCK_NB)`.
    public static func acquire(_ path: String, holder: String) throws(FerryError) -> FileLock {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(
                FilePath(path), .readWrite, options: [.create, .closeOnExec],
                permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw .syscall("opening lock file", errno: error as? Errno ?? .ioError, path: path)
        }
        do {
            try fd.flock(LOCK_EX | LOCK_NB)
        } catch {
            try? fd.closeOnce()
            if error == .wouldBlock {
                let owner = (TextFile.attribute(path) ?? "").trimmingSpaces
                throw FerryError(
                    code: .lockHeld,
                    message: "another Ferry command holds the lock '\(path)'\(owner.isEmpty ? "" : " (\(owner))")",
                    cause: error)
            }
            throw .syscall("locking", errno: error, path: path)
        }
        // Record who holds it; a failure to do so does not matter for correctness.
        let text = Array("\(holder) (pid \(system_getpid()))\n".utf8)
        _ = try? fd.resize(to: 0)
        _ = try? text.withUnsafeBytes { try fd.write(toAbsoluteOffset: 0, $0) }
        return FileLock(path: path, descriptor: fd)
    }

    /// Releases the lock (closing the descriptor). Safe to call twice.
    public func release() {
        guard let descriptor else { return }
        self.descriptor = nil
        // Unlock explicitly: a child spawned by another thread may hold a copy of the descriptor
        // until its exec, and closing ours alone would leave the lock held until then.
        _ = try? descriptor.flock(LOCK_UN)
        try? descriptor.closeOnce()
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines.
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[start...end])
    }
}
