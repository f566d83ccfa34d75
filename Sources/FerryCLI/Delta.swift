import ArgumentParser
import FerryBundle
import FerryDelta
import FerrySystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension FerryCommand {
    /// `ferry delta create|apply`: block deltas between image files (host side).
    struct Delta: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make and apply block deltas between images (host side).",
            discussion: "The format is described in docs/delta-format.md.",
            subcommands: [Create.self, Apply.self])

        struct Create: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Make a delta that turns image OLD into image NEW.",
                discussion: """
                    Blocks of NEW found anywhere in OLD become copies (moved data costs nothing); long \
                    runs of zeros cost nothing; stretches of changed files are matched approximately \
                    against the regions of OLD they resemble (their byte-wise differences and the bytes \
                    between matches each compressed with LZMA2), on all cores. Prints what the delta \
                    holds and the peak memory.
                    """)
            @Option(help: ArgumentHelp("The image the delta starts from.", valueName: "image"))
            var from: String
            @Option(help: ArgumentHelp("The image the delta produces.", valueName: "image"))
            var to: String
            @Option(name: [.short, .long], help: ArgumentHelp("Where to write the delta.", valueName: "file"))
            var output: String
            @Option(help: "xz level for changed data, 0 to 9.")
            var preset = 9
            @Option(
                help: ArgumentHelp(
                    "The delta format version: 3 (approximate matches), or 2 for devices whose Ferry predates it.",
                    valueName: "2|3"))
            var formatVersion = Int(DeltaFormat.formatVersion)

            func validate() throws {
                guard (0...9).contains(preset) else { throw ValidationError("--preset must be 0 to 9") }
                guard DeltaFormat.readableVersions.contains(UInt32(clamping: formatVersion)) else {
                    throw ValidationError("--format-version must be 2 or 3")
                }
            }

            func run() async throws {
                MemoryPolicy.applyForHost()
                let source = try BlockDevice.openForReading(from)
                let target = try BlockDevice.openForReading(to)
                var options = DeltaGenerator.Options()
                options.preset = preset
                options.formatVersion = UInt32(formatVersion)
                let sink = try FileByteSink(path: output + ".partial")
                let statistics: DeltaGenerator.Statistics
                do {
                    statistics = try DeltaGenerator(source: source, target: target, options: options).create {
                        (bytes) throws(FerryError) in
                        try sink.write(bytes)
                    }
                    try sink.finish()
                    try FileSystem.rename(output + ".partial", to: output)
                } catch {
                    FileSystem.removeIfPossible(output + ".partial")
                    throw error
                }
                var lines = ["Wrote \(output): \(statistics.deltaBytes) bytes for a \(target.byteCount)-byte image."]
                for kind in [DeltaFormat.Kind.zero, .copy, .literal, .diff, .patch] {
                    let count = statistics.operations[kind] ?? 0
                    guard count > 0 else { continue }
                    lines.append(
                        "  \("\(kind)".padding(8)) \(count) operations, \(statistics.targetBytes[kind] ?? 0) target bytes"
                    )
                }
                lines.append("Peak memory: \(Delta.peakMemoryMiB()) MiB.")
                Terminal.writeOutput(lines.joined(separator: "\n") + "\n")
            }
        }

        struct Apply: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Apply a delta to image OLD, writing image NEW.",
                discussion: """
                    The same checks as on a device: every source range the delta reads against its SHA-256 \
                    before anything is written, every operation's output against its SHA-256, the whole \
                    result against the delta's target SHA-256. NEW is written only when all of it verified.
                    """)
            @Option(help: ArgumentHelp("The image the delta was made from.", valueName: "image"))
            var from: String
            @Option(help: ArgumentHelp("The delta.", valueName: "file"))
            var delta: String
            @Option(name: [.short, .long], help: ArgumentHelp("Where to write the new image.", valueName: "image"))
            var output: String

            func run() async throws {
                MemoryPolicy.applyForHost()
                let source = try BlockDevice.openForReading(from)
                let input = try FileByteSource(path: delta)
                let applier = try DeltaApplier(delta: input, source: source, sourceName: "'\(from)'")
                try applier.verifySource()
                let sink = try FileByteSink(path: output + ".partial")
                do {
                    try applier.apply(from: input) { (_, bytes, _) throws(FerryError) in try sink.write(bytes) }
                    var extra: UInt8 = 0
                    guard
                        try withUnsafeMutableBytes(
                            of: &extra, { (raw) throws(FerryError) in try input.read(into: raw) }) == 0
                    else {
                        throw FerryError(
                            code: .bundleInvalid, message: "delta '\(delta)': trailing data after the last operation")
                    }
                    try sink.finish()
                    try FileSystem.rename(output + ".partial", to: output)
                } catch {
                    FileSystem.removeIfPossible(output + ".partial")
                    throw error
                }
                Terminal.writeOutput(
                    "Wrote \(output): \(applier.header.targetSize) bytes, SHA-256 \(applier.header.targetSHA256) verified. "
                        + "Peak memory: \(Delta.peakMemoryMiB()) MiB.\n")
            }
        }

        /// The process's peak resident memory (getrusage), in MiB.
        static func peakMemoryMiB() -> Int {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            return usage.ru_maxrss / 1024
        }
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
