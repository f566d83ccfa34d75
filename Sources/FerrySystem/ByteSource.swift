import SystemPackage

/// A sequential stream of bytes: a bundle read from a file, standard input or HTTPS.
///
/// Readers never seek backwards, so one code path serves files, pipes and network streams; they
/// may skip forwards (a resumed install skips what it already wrote).
public protocol ByteSource: AnyObject {
    /// Reads up to `buffer.count` bytes; returns 0 only at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int
    /// Moves `count` bytes forward without returning them. Skipping past the end is not an error
    /// here: the next read returns 0. The default reads and discards.
    func skip(_ count: Int64) throws(FerryError)
    /// A name for messages (the file, `standard input`, the URL).
    var sourceName: String { get }
}

extension ByteSource {
    public func skip(_ count: Int64) throws(FerryError) {
        try discard(count)
    }

    /// Reads and drops `count` bytes (or up to the end of the stream).
    public func discard(_ count: Int64) throws(FerryError) {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        var left = count
        while left > 0 {
            let read = try self.read(
                into: UnsafeMutableRawBufferPointer(rebasing: scratch[..<Int(min(left, Int64(scratch.count)))]))
            if read == 0 { return }
            left -= Int64(read)
        }
    }

    /// Reads exactly `buffer.count` bytes.
    /// - Throws: `.truncated` when the stream ends first.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, what: String) throws(FerryError) {
        var done = 0
        while done < buffer.count {
            let count = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if count == 0 {
                throw FerryError(
                    code: .truncated,
                    message: "\(sourceName) ends early: \(what) is cut after \(done) of \(buffer.count) bytes")
            }
            done += count
        }
    }

    /// Reads exactly `count` bytes into a new array.
    public func readExactly(_ count: Int, what: String) throws(FerryError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        defer { buffer.deallocate() }
        let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
        try readExactly(into: slice, what: what)
        return Array(slice)
    }
}

/// A `ByteSource` over a file descriptor (a regular file or a pipe such as standard input).
public final class FileByteSource: ByteSource {
    public let sourceName: String
    private let descriptor: FileDescriptor
    private let ownsDescriptor: Bool

    /// Opens `path` for reading.
    /// - Throws: `.deviceNotFound`, `.permissionDenied`, `.io`.
    public init(path: String) throws(FerryError) {
        do { descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec]) } catch {
            throw .syscall("opening", errno: error as? Errno ?? .ioError, path: path)
        }
        sourceName = "'\(path)'"
        ownsDescriptor = true
    }

    /// Standard input.
    public init(standardInput: Void = ()) {
        descriptor = .standardInput
        sourceName = "standard input"
        ownsDescriptor = false
    }

    deinit { if ownsDescriptor { try? descriptor.closeOnce() } }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        do { return try descriptor.read(into: buffer) } catch {
            throw .syscall("reading", errno: error as? Errno ?? .ioError, path: sourceName)
        }
    }

    /// Seeks in a regular file; reads and discards from a pipe.
    public func skip(_ count: Int64) throws(FerryError) {
        if (try? descriptor.seek(offset: count, from: .current)) == nil { try discard(count) }
    }
}

/// A `ByteSource` over bytes in memory (tests, small documents).
public final class MemoryByteSource: ByteSource {
    public let sourceName: String
    private let bytes: [UInt8]
    private var position = 0

    public init(_ bytes: [UInt8], name: String = "memory") {
        self.bytes = bytes
        self.sourceName = name
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(FerryError) -> Int {
        let count = min(buffer.count, bytes.count - position)
        guard count > 0 else { return 0 }
        bytes[position..<(position + count)].withUnsafeBytes { buffer.copyMemory(from: $0) }
        position += count
        return count
    }

    public func skip(_ count: Int64) throws(FerryError) {
        position = Int(min(Int64(bytes.count), Int64(position) + count))
    }
}

extension Array where Element == UInt8 {
    // The standard library's `withUnsafe(Mutable)Bytes` rethrow untyped errors; these keep `FerryError`.

    public func withTypedUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws(FerryError) -> R) throws(FerryError)
        -> R
    {
        try withUnsafeBytes { buffer in Result { () throws(FerryError) in try body(buffer) } }.get()
    }

    public mutating func withTypedUnsafeMutableBytes<R>(
        _ body: (UnsafeMutableRawBufferPointer) throws(FerryError) -> R
    ) throws(FerryError) -> R {
        try withUnsafeMutableBytes { buffer in Result { () throws(FerryError) in try body(buffer) } }.get()
    }
}
