import FerryBootloader
import FerrySystem
import FerryTestSupport
import Testing

/// Both directions against the real fw_printenv/fw_setenv (Debian's libubootenv-tool), through an
/// fw_env.config, single and redundant; with 300 alternating writes across the flag wrap-around.
@Suite(.serialized) struct UBootInteropTests {
    /// A fresh environment file made by mkenvimage and an fw_env.config naming it.
    func makeEnvironment(in dir: String, redundant: Bool, size: Int = 0x4000, offset: Int = 0x1000) throws -> String {
        try DurableFile.write("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n", to: "\(dir)/initial.txt")
        try Shell.check(
            ["mkenvimage", "-s", "\(size)"] + (redundant ? ["-r"] : []) + [
                "-o", "\(dir)/copy.bin", "\(dir)/initial.txt",
            ])
        let copy = try readFile("\(dir)/copy.bin")
        var disk = [UInt8](repeating: 0, count: offset) + copy
        if redundant { disk += copy + [UInt8](repeating: 0, count: 512) }
        try makeFile("\(dir)/env.img", bytes: disk)
        var config = "\(dir)/env.img 0x\(String(offset, radix: 16)) 0x\(String(size, radix: 16))\n"
        if redundant { config += "\(dir)/env.img 0x\(String(offset + size, radix: 16)) 0x\(String(size, radix: 16))\n" }
        try DurableFile.write(config, to: "\(dir)/fw_env.config")
        return "\(dir)/fw_env.config"
    }

    func printenv(_ config: String) throws -> [String: String] {
        let output = try Shell.check(["fw_printenv", "-c", config])
        var variables: [String: String] = [:]
        for line in output.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            variables[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return variables
    }

    @Test(arguments: [false, true])
    func theirWritesAreReadByFerry(redundant: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let config = try makeEnvironment(in: dir, redundant: redundant)
            try Shell.check(["fw_setenv", "-c", config, "BOOT_ORDER", "B A"])
            try Shell.check(["fw_setenv", "-c", config, "greeting", "hello world"])
            let environment = try UBootEnvironment(fwEnvConfig: config)
            #expect(
                try environment.read() == [
                    "BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3", "greeting": "hello world",
                ])
        }
    }

    @Test(arguments: [false, true])
    func ferryWritesAreListedByThem(redundant: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let config = try makeEnvironment(in: dir, redundant: redundant, offset: 0)
            if !redundant {
                // A single copy filling its whole file is replaced atomically (new file + rename).
                try Shell.check(["truncate", "-s", "16384", "\(dir)/env.img"])
            }
            let environment = try UBootEnvironment(fwEnvConfig: config)
            try environment.update(["BOOT_ORDER": "B A", "BOOT_B_LEFT": "3", "note": "x=y z", "BOOT_A_LEFT": nil])
            #expect(try printenv(config) == ["BOOT_ORDER": "B A", "BOOT_B_LEFT": "3", "note": "x=y z"])
        }
    }

    @Test func threeHundredAlternatingWritesAcrossTheFlagWrapAround() async throws {
        try await withTemporaryDirectory { dir in
            let config = try makeEnvironment(in: dir, redundant: true)
            let environment = try UBootEnvironment(fwEnvConfig: config)
            var flags: [UInt8] = []
            for round in 1...300 {
                if round % 2 == 0 {
                    try Shell.check(["fw_setenv", "-c", config, "counter", "\(round)"])
                } else {
                    try environment.update(["counter": "\(round)"])
                }
                #expect(try environment.read()["counter"] == "\(round)")
                if round % 10 == 0 || (250...260).contains(round) {
                    #expect(try printenv(config)["counter"] == "\(round)")
                }
                let state = try environment.readState()
                flags.append(state.copies[state.current]?.flags ?? 0)
            }
            // The counter really wrapped (255 → 0) during the run.
            #expect(flags.contains(255) && flags.contains(0))
            #expect(try printenv(config)["counter"] == "300")
        }
    }
}
