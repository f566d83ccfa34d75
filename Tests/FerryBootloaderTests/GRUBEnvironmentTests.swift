import FerryBootloader
import FerrySystem
import FerryTestSupport
import Testing

/// The GRUB environment block, both directions with the real grub-editenv (grub-common).
@Suite struct GRUBEnvironmentTests {
    @Test func theirBlockIsReadByFerryAndOursByThem() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/grubenv"
            try Shell.check(["grub-editenv", path, "create"])
            try Shell.check(["grub-editenv", path, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "tricky=back\\slash"])
            let environment = GRUBEnvironment(path: path)
            #expect(try environment.read() == ["ORDER": "A B", "A_OK": "1", "A_TRY": "0", "tricky": "back\\slash"])
            try environment.update(["B_OK": "1", "multi": "line one\nline two", "A_TRY": nil])
            #expect(try readFile(path).count == 1024)
            let listed = try Shell.check(["grub-editenv", path, "list"])
            #expect(listed.contains("B_OK=1\n"))
            #expect(listed.contains("ORDER=A B\n"))
            #expect(!listed.contains("A_TRY"))
            #expect(try environment.read()["multi"] == "line one\nline two")
            // grub-editenv keeps what Ferry wrote, escapes included.
            try Shell.check(["grub-editenv", path, "set", "X=1"])
            #expect(try environment.read()["multi"] == "line one\nline two")
            #expect(try environment.read()["tricky"] == "back\\slash")
        }
    }

    @Test func wrongSizeOrSignatureIsRefusedAndNothingIsWritten() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/grubenv"
            let good = try GRUBEnvironment.encode(["A": "1"], name: "t")
            let cases: [[UInt8]] = [
                Array(good.prefix(1000)), good + good, [UInt8](repeating: UInt8(ascii: "#"), count: 1024),
                Array("# GRUB Environment Blok\n".utf8) + [UInt8](repeating: 35, count: 1000), [],
            ]
            for bytes in cases {
                try makeFile(path, bytes: bytes)
                let environment = GRUBEnvironment(path: path)
                let readError = #expect(throws: FerryError.self) { try environment.read() }
                #expect(readError?.code == .bootEnvironmentInvalid)
                let writeError = #expect(throws: FerryError.self) { try environment.update(["A": "2"]) }
                #expect(writeError?.code == .bootEnvironmentInvalid)
                #expect(try readFile(path) == bytes)
            }
            let missing = #expect(throws: FerryError.self) { try GRUBEnvironment(path: "\(dir)/none").read() }
            #expect(missing?.code == .bootEnvironmentInvalid)
        }
    }

    @Test func tooManyVariablesForOneBlockAreRefused() async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/grubenv"
            try Shell.check(["grub-editenv", path, "create"])
            let before = try readFile(path)
            let error = #expect(throws: FerryError.self) {
                try GRUBEnvironment(path: path).update(["big": String(repeating: "x", count: 1000)])
            }
            #expect(error?.code == .bootEnvironmentTooSmall)
            #expect(try readFile(path) == before)
        }
    }
}
