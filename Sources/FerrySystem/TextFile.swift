import SystemPackage

/// Small whole-file reads and writes (configuration, state, sysfs and procfs attributes).
public enum TextFile {
    /// The largest file `read` accepts: configuration and state files are small; a bigger one is
    /// a mistake or an attack, and Ferry's memory must stay bounded.
    public static let maximumByteCount = 4 << 20

    /// Reads a whole file as bytes.
    /// - Throws: `.deviceNotFound` when missing (callers re-map for configuration/state files),
    ///   `.permissionDenied`, `.io`, or `.io` when the file exceeds `limit`.
    public static func readBytes(_ path: String, limit: Int = maximumByteCount) throws(FerryError) -> [UInt8] {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec]) } catch {
            throw .syscall("opening", errno: error as? Errno ?? .ioError, path: path)
        }
        defer { try? fd.closeOnce() }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count: Int
            do {
                count = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
            } catch {
                throw .syscall("reading", errno: error as? Errno ?? .ioError, path: path)
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[..<count])
            if bytes.count > limit {
                throw FerryError(code: .io, message: "'\(path)' is larger than \(limit) bytes")
            }
        }
        return bytes
    }

    /// Reads a whole file as UTF-8 text (invalid sequences are replaced).
    public static func read(_ path: String, limit: Int = maximumByteCount) throws(FerryError) -> String {
        String(decoding: try readBytes(path, limit: limit), as: UTF8.self)
    }

    /// Reads a sysfs-style attribute: the text with the trailing newline removed, nil if missing.
    public static func attribute(_ path: String) -> String? {
        guard let text = try? read(path, limit: 64 << 10) else { return nil }
        return text.hasSuffix("\n") ? String(text.dropLast()) : text
    }

    /// Whether something exists at `path` (no symlink resolution errors are reported).
    public static func exists(_ path: String) -> Bool {
        (try? fileStatus(path: path)) != nil
    }

    /// Whether `path` is a directory.
    public static func isDirectory(_ path: String) -> Bool {
        (try? fileStatus(path: path))?.isDirectory ?? false
    }
}
