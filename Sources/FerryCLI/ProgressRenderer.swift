import ArgumentParser
import FerryCore
import FerryJSON
import FerrySystem

/// How image writes report progress: `--progress auto|bar|lines|json`.
enum ProgressMode: String, ExpressibleByArgument, CaseIterable {
    /// A bar on a terminal, plain lines otherwise.
    case auto
    /// One line redrawn in place: stage, slot, percentage, bytes, rate, ETA.
    case bar
    /// A plain line every few seconds (serial consoles, logs).
    case lines
    /// One JSON object per line (for UIs): stage, slot, bytes done and total.
    case json
}

/// Renders `ProgressEvent`s in one of the modes, throttled so a console is not flooded.
final class ProgressRenderer {
    let mode: ProgressMode
    private var lastEmit = -1.0
    private var stageStart = WallClock.monotonicSeconds()
    private var lastKey = ""
    private var barOpen = false
    /// Seconds between plain lines.
    let lineInterval: Double

    init(mode: ProgressMode, lineInterval: Double = 3) {
        self.mode = mode == .auto ? (ProcessEnvironment.isTerminal(1) ? .bar : .lines) : mode
        self.lineInterval = lineInterval
    }

    func handle(_ event: ProgressEvent) {
        let now = WallClock.monotonicSeconds()
        let key = "\(event.stage.rawValue) \(event.slot ?? "")"
        let isNewStage = key != lastKey
        if isNewStage {
            lastKey = key
            stageStart = now
        }
        let finished = event.bytesTotal > 0 && event.bytesDone == event.bytesTotal
        switch mode {
        case .json:
            var object: [String: JSONValue] = [
                "stage": .string(event.stage.rawValue), "bytesDone": .number(Double(event.bytesDone)),
                "bytesTotal": .number(Double(event.bytesTotal)),
            ]
            if let slot = event.slot { object["slot"] = .string(slot) }
            // Every event of a stage boundary; otherwise at most 4 per second.
            guard isNewStage || finished || now - lastEmit >= 0.25 else { return }
            lastEmit = now
            Terminal.writeOutput(String(decoding: JSONValue.object(object).compact(), as: UTF8.self) + "\n")
        case .lines:
            guard isNewStage || finished || now - lastEmit >= lineInterval else { return }
            lastEmit = now
            Terminal.writeOutput(describe(event, now: now) + "\n")
        case .bar, .auto:
            guard isNewStage || finished || now - lastEmit >= 0.1 else { return }
            lastEmit = now
            if isNewStage && barOpen { Terminal.writeOutput("\n") }
            let fraction = event.bytesTotal > 0 ? Double(event.bytesDone) / Double(event.bytesTotal) : 1
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
            Terminal.writeOutput("\r[\(bar)] \(describe(event, now: now))\u{1B}[K")
            barOpen = true
            if event.stage == .done {
                Terminal.writeOutput("\n")
                barOpen = false
            }
        }
    }

    private func describe(_ event: ProgressEvent, now: Double) -> String {
        let what = "\(event.stage.rawValue)\(event.slot.map { " \($0)" } ?? "")"
        guard event.bytesTotal > 0 else { return what }
        let percent = Int(Double(event.bytesDone) * 100 / Double(event.bytesTotal))
        let elapsed = max(now - stageStart, 0.001)
        let rate = Double(event.bytesDone) / elapsed
        var text =
            "\(what): \(percent)% (\(ByteFormat.string(event.bytesDone)) of \(ByteFormat.string(event.bytesTotal))"
        if event.bytesDone > 0 && event.bytesDone < event.bytesTotal {
            let eta = Int(Double(event.bytesTotal - event.bytesDone) / max(rate, 1))
            text += ", \(ByteFormat.string(Int64(rate)))/s, ETA \(eta) s"
        }
        return text + ")"
    }
}
