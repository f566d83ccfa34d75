/// The crash-simulation seam (docs/reliability.md): while a recorder is installed, every write,
/// zeroing and sync that reaches a device or image file (`BlockDevice`), every atomic file
/// replacement (`DurableFile`), removal and directory sync is reported to it, in order, before
/// it returns. A replayer then builds the states a power cut could leave behind.
///
/// Nothing is recorded unless a test installs a recorder; the cost otherwise is one load per call.
public protocol IORecorder: AnyObject {
    func record(_ event: IOEvent)
}

/// One durable-storage operation, with absolute paths and file offsets.
public enum IOEvent: Sendable {
    /// `pwrite` of `bytes` at `offset` of the file or device at `path` (not durable before a `sync`).
    case write(path: String, offset: Int64, bytes: [UInt8])
    /// `count` bytes at `offset` made to read as zeros.
    case zero(path: String, offset: Int64, count: Int64)
    /// `fsync`/`fdatasync` of `path`: everything written to it before is durable.
    case sync(path: String)
    /// `path` atomically replaced by a new, already synced file holding `bytes` (a rename: durable
    /// once its folder is synced).
    case replace(path: String, bytes: [UInt8])
    /// `path` removed (durable once its folder is synced).
    case remove(path: String)
    /// `fsync` of the folder `path`: renames and removals in it before are durable.
    case directorySync(path: String)
}

public enum IOTrace {
    /// The installed recorder (tests only).
    nonisolated(unsafe) public static var recorder: (any IORecorder)?

    @inline(__always)
    static func record(_ event: @autoclosure () -> IOEvent) {
        if let recorder { recorder.record(event()) }
    }

    /// Reports a removal done outside `DurableFile` (state files removed with `unlink`).
    public static func recordRemoval(_ path: String) { record(.remove(path: path)) }
}
