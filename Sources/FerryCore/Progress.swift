import FerrySystem

/// What an image write reports as it goes; the CLI renders it (bar, lines or JSON lines).
public struct ProgressEvent: Sendable, Equatable {
    public enum Stage: String, Sendable {
        case verify, write
        case readBack = "read-back"
        case switchGroup = "switch"
        case done
    }
    public var stage: Stage
    /// The slot being written or read back, when there is one.
    public var slot: String?
    public var bytesDone: Int64
    public var bytesTotal: Int64

    public init(stage: Stage, slot: String?, bytesDone: Int64, bytesTotal: Int64) {
        self.stage = stage
        self.slot = slot
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
    }
}
