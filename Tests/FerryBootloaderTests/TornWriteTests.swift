import FerryBootloader
import FerrySystem
import FerryTestSupport
import Testing

/// A write cut at every step — and, for a redundant environment, at every byte of the copy being
/// written — leaves an environment that Ferry and the real tools read as the complete old or the
/// complete new one.
@Suite(.serialized) struct TornWriteTests {
    static let old = ["BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"]
    static let new = ["BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"]

    /// Parses fw_printenv's output.
    func printenv(_ config: String) throws -> [String: String]? {
        let result = try Shell.run(["fw_printenv", "-c", config])
        guard result.status == 0 else { return nil }
        var variables: [String: String] = [:]
        for line in result.output.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            variables[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return variables
    }

    @Test(arguments: [UBootEnvironmentFormat.FlagScheme.incremental, .boolean])
    func redundantWriteCutAtEveryByte(scheme: UBootEnvironmentFormat.FlagScheme) async throws {
        try await withTemporaryDirectory { dir in
            let size = 0x400
            let format = UBootEnvironmentFormat(size: size, redundant: true)
            // Start: copy 1 current; copy 2 an older generation.
            let copy1 = try UBootEnvironmentCodec.encode(Self.old, flags: 1, padByte: 0xff, format: format, name: "t")
            let copy2 = try UBootEnvironmentCodec.encode(
                ["stale": "1"], flags: scheme == .boolean ? 0 : 0, padByte: 0xff, format: format, name: "t")
            let start = copy1 + copy2
            let path = "\(dir)/env.img"
            try makeFile(path, bytes: start)
            let config = "\(dir)/fw_env.config"
            try DurableFile.write(
                "\(path) 0x0 0x\(String(size, radix: 16))\n\(path) 0x\(String(size, radix: 16)) 0x\(String(size, radix: 16))\n",
                to: config)
            let locations = try FWEnvConfig.load(config).locations
            func environment() -> UBootEnvironment {
                UBootEnvironment(locations: locations, name: "t", flagScheme: scheme)
            }
            // The complete write, to learn its final bytes.
            try environment().update(Self.new.mapValues { Optional($0) })
            let end = try readFile(path)
            #expect(try environment().read() == Self.new)
            // Only copy 2 changed in the first step; copy 1's flag byte changes last (boolean).
            #expect(Array(end[..<4]) == Array(start[..<4]))
            let written = Array(end[size...])

            // Every prefix of the copy-2 write, with copy 1 untouched: the old environment.
            for cut in 0...size {
                var torn = start
                torn.replaceSubrange(size..<(size + cut), with: written[..<cut])
                try makeFile(path, bytes: torn)
                let seen = try environment().read()
                if Array(torn[size...]) != written {
                    #expect(seen == Self.old, "cut at byte \(cut)")
                } else {
                    // The rest of the copy already held the same bytes (padding): it is complete.
                    #expect(seen == Self.new || seen == Self.old, "cut at byte \(cut), copy complete")
                }
                // The real tool agrees (checked on every 16th byte and around the header: ~70 runs).
                if cut % 16 == 0 || cut < 8 || cut == size {
                    #expect(try printenv(config) == seen, "fw_printenv at cut \(cut)")
                }
            }
            // Boolean: new copy complete, old flag not yet cleared: still one complete environment.
            if scheme == .boolean {
                var both = start
                both.replaceSubrange(size..<(2 * size), with: written)
                try makeFile(path, bytes: both)
                let seen = try environment().read()
                #expect(seen == Self.old || seen == Self.new)
                #expect(try printenv(config) == seen)
            }
            try makeFile(path, bytes: end)
            #expect(try environment().read() == Self.new)
            #expect(try printenv(config) == Self.new)
        }
    }

    @Test func oneCorruptCopyIsIgnoredAndRepairedOnTheNextWrite() async throws {
        try await withTemporaryDirectory { dir in
            let size = 0x400
            let format = UBootEnvironmentFormat(size: size, redundant: true)
            let path = "\(dir)/env.img"
            var copy1 = try UBootEnvironmentCodec.encode(Self.old, flags: 5, padByte: 0, format: format, name: "t")
            let copy2 = try UBootEnvironmentCodec.encode(Self.new, flags: 6, padByte: 0, format: format, name: "t")
            copy1[100] ^= 0xff  // copy 1 corrupt; copy 2 is the newer one anyway
            try makeFile(path, bytes: copy2 + copy1)  // swapped: the corrupt one is copy 2 now
            let config = "\(dir)/fw_env.config"
            try DurableFile.write("\(path) 0x0 0x400\n\(path) 0x400 0x400\n", to: config)
            let environment = try UBootEnvironment(fwEnvConfig: config)
            #expect(try environment.read() == Self.new)
            #expect(try printenv(config) == Self.new)
            try environment.update(["extra": "1"])
            let state = try environment.readState()
            #expect(state.copies[0] != nil && state.copies[1] != nil)
            #expect(state.current == 1)
            #expect(try printenv(config)?["extra"] == "1")
        }
    }

    @Test func bothCopiesCorruptIsAnErrorAndNothingIsWritten() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/env.img"
            let garbage = seededBytes(count: 0x800, seed: 7)
            try makeFile(path, bytes: garbage)
            let config = "\(dir)/fw_env.config"
            try DurableFile.write("\(path) 0x0 0x400\n\(path) 0x400 0x400\n", to: config)
            let environment = try UBootEnvironment(fwEnvConfig: config)
            let readError = #expect(throws: FerryError.self) { try environment.read() }
            #expect(readError?.code == .bootEnvironmentInvalid)
            let writeError = #expect(throws: FerryError.self) { try environment.update(["a": "1"]) }
            #expect(writeError?.code == .bootEnvironmentInvalid)
            #expect(try readFile(path) == garbage)
        }
    }

    /// A file environment (GRUB block, whole-file U-Boot copy) is replaced by new-file + rename:
    /// at every step the target is the complete old or new file; a temporary file left by a cut
    /// is ignored by Ferry and by grub-editenv.
    @Test func fileEnvironmentCutAtEveryStep() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/grubenv"
            try Shell.check(["grub-editenv", path, "create"])
            try GRUBEnvironment(path: path).update(Self.old.mapValues { Optional($0) })
            let old = try readFile(path)
            let new = try GRUBEnvironment.encode(Self.new, name: "t")
            // Cut while the temporary file is written (every 64th byte) or before the rename:
            // the target still holds the old block.
            for cut in stride(from: 0, through: new.count, by: 64) {
                try makeFile("\(dir)/.grubenv.tmp-1", bytes: Array(new[..<cut]))
                #expect(try readFile(path) == old)
                #expect(try GRUBEnvironment(path: path).read() == Self.old)
                #expect(try Shell.check(["grub-editenv", path, "list"]).contains("BOOT_ORDER=A B"))
            }
            // After the rename: the new block, complete.
            try DurableFile.write(new, to: path)
            #expect(try GRUBEnvironment(path: path).read() == Self.new)
            #expect(try Shell.check(["grub-editenv", path, "list"]).contains("BOOT_ORDER=B A"))
            // And a real update leaves no temporary file behind.
            try Shell.check(["rm", "-f", "\(dir)/.grubenv.tmp-1"])
            try GRUBEnvironment(path: path).update(["x": "1"])
            #expect(try Shell.check(["ls", "-A", dir]) == "grubenv\n")
        }
    }
}
