import FerryFuzzTargets
import FerrySystem

#if canImport(Glibc)
import Glibc
#endif

// ferry-fuzz: runs one fuzz target (docs/fuzzing.md).
//
// Built by tools/fuzz with `-sanitize=fuzzer -D FERRY_LIBFUZZER`, it is a libFuzzer binary: the
// target comes from FERRY_FUZZ_TARGET, every argument goes to libFuzzer. An ordinary build (swift
// build) makes it a replayer instead:
//
//     ferry-fuzz --list
//     ferry-fuzz <target> <file or folder>...     run the target on each file (a crash reproduces)
//     ferry-fuzz make-seeds <corpus folder>       write the seeds Ferry's own writers make

/// One line to standard error.
func printError(_ line: String) {
    var bytes = Array(line.utf8)
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        guard written > 0 else { return }
        bytes.removeFirst(written)
    }
}

#if FERRY_LIBFUZZER
internal import CLibFuzzer

/// The target libFuzzer calls; chosen once, before the driver starts.
nonisolated(unsafe) private var selected: FuzzTarget?

/// The executable's entry point: SwiftPM links `main` to `<module>_main`. libFuzzer's own
/// `main` is not used; its driver is called with the same arguments.
@_cdecl("ferry_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    let name = getenv("FERRY_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = FuzzTargets.named(name) else {
        let names = FuzzTargets.all.map(\.name).joined(separator: ", ")
        printError("ferry-fuzz: set FERRY_FUZZ_TARGET to one of: \(names)\n")
        return 2
    }
    selected = target
    var count = argc
    var arguments: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        selected!.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
@main
struct FerryFuzz {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let first = arguments.first else { usage() }
        if first == "--list" {
            for target in FuzzTargets.all { print("\(target.name)\t\(target.summary)") }
            return
        }
        if first == "make-seeds" {
            guard arguments.count == 2 else { usage() }
            do { try SeedWriter.write(into: arguments[1]) } catch {
                printError("ferry-fuzz: error: \(error.message)\n")
                exit(1)
            }
            return
        }
        guard let target = FuzzTargets.named(first), arguments.count >= 2 else { usage() }
        var count = 0
        for path in arguments.dropFirst() {
            for file in FuzzCorpus.files(path) {
                guard let bytes = FuzzCorpus.read(file) else {
                    printError("ferry-fuzz: error: cannot read '\(file)'\n")
                    exit(1)
                }
                target.run(bytes)
                count += 1
            }
        }
        print("ferry-fuzz: \(target.name): \(count) inputs ran without a crash")
    }

    static func usage() -> Never {
        printError("usage: ferry-fuzz --list | <target> <file or folder>... | make-seeds <corpus folder>\n")
        exit(2)
    }
}
#endif
