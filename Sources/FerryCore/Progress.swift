/// What an image write reports as it goes; the CLI renders it (bar, lines or JSON lines).
public struct ProgressEvent: Sendable, Equatable {
    public enum Stage: String, Sendable { case verify, write, readBack = "read-back", switchGroup = "switch", done }
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

/// Runs the configured pre- and post-install hooks.
public struct Hooks {
    public let configuration: HooksConfiguration

    /// Runs `command` (if configured) with `environment`; a non-zero exit or a timeout fails.
    /// - Throws: `.hookFailed` naming the hook and how it failed.
    public func run(_ name: String, _ command: String?, environment: [String: String]) throws(FerryError) {
        guard let command else { return }
        let result: ChildProcess.Result
        do {
            result = try ChildProcess.run([command], environment: environment, timeoutSeconds: configuration.timeoutSeconds)
        } catch {
            throw FerryError(code: .hookFailed, message: "the \(name) hook '\(command)' could not run: \(error.message)", cause: error)
        }
        if result.timedOut {
            throw FerryError(
                code: .hookFailed, message: "the \(name) hook '\(command)' timed out after \(configuration.timeoutSeconds) s")
        }
        guard result.status == 0 else {
            throw FerryError(code: .hookFailed, message: "the \(name) hook '\(command)' failed with status \(result.status)")
        }
    }
}

import FerrySystem
