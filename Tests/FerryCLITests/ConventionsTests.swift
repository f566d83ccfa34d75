import ArgumentParser
import FerryCLI
import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Conventions a newcomer relies on: global options on either side of the subcommand, the host
/// refusing what every device would refuse, and messages that never show an optional or an
/// empty name.
@Suite(.serialized) struct ConventionsTests {
    @Test func globalOptionsGoOnEitherSideOfTheSubcommand() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = sandbox.configurationPath
            let after = try Shell.run([TestEnvironment.ferryBinary, "status", "--json", "--config", config])
            #expect(after.status == 0, "\(after.output)")
            for arguments in [
                ["--config", config, "status", "--json"], ["--config=\(config)", "status", "--json"],
                ["--verbose", "--config", config, "status", "--json"],
                ["--config", config, "--verbose", "status", "--json"],
            ] {
                let result = try Shell.run([TestEnvironment.ferryBinary] + arguments)
                #expect(result.status == 0, "\(arguments): \(result.output)")
                #expect(result.output.hasSuffix(after.output), "\(arguments): \(result.output)")
            }
            // Nested subcommands, and $FERRY_CONFIG instead.
            #expect(
                try Shell.run([TestEnvironment.ferryBinary, "--config", config, "env", "get", "BOOT_ORDER"]).output
                    == "A B\n")
            #expect(
                try Shell.run(
                    [TestEnvironment.ferryBinary, "env", "get", "BOOT_ORDER"], environment: ["FERRY_CONFIG": config]
                ).output == "A B\n")
            // A host command has no configuration, but --verbose goes anywhere.
            try sandbox.makeUpdateBundle(in: dir)
            #expect(
                try Shell.run([TestEnvironment.ferryBinary, "--verbose", "bundle", "info", "\(dir)/update.ferry"])
                    .status == 0)
            #expect(
                try Shell.run([TestEnvironment.ferryBinary, "bundle", "info", "\(dir)/update.ferry", "--verbose"])
                    .status == 0)
            // A wrong option stays a usage error (exit 2) wherever it is.
            #expect(
                try Shell.run([TestEnvironment.ferryBinary, "--config", config, "status", "--no-such-option"]).status
                    == 2)
            #expect(
                try Shell.run([
                    TestEnvironment.ferryBinary, "--config", config, "bundle", "info", "\(dir)/update.ferry",
                ]).status == 2)
        }
    }

    /// `ferry bundle index` and `ferry bundle create` refuse an expiry in the past, as every
    /// device would refuse the result (exit 46, the device's message).
    @Test func theHostRefusesWhatExpiredAlready() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try sandbox.makeUpdateBundle(in: dir)
            let pki = "\(sandbox.directory)/pki"
            let index = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "index", "-o", "\(dir)/index.json", "--serial", "1", "--cert",
                "\(pki)/signer1.pem",
                "--key", "\(pki)/signer1.key", "--expires", "2021-01-01T00:00:00Z", "\(dir)/update.ferry",
            ])
            #expect(index.status == FerryError.Code.expired.exitStatus, "\(index.output)")
            #expect(
                index.output.hasPrefix("ferry: error: the update index expired at 2021-01-01T00:00:00Z (trusted time "),
                "\(index.output)")
            #expect(!TextFile.exists("\(dir)/index.json") && !TextFile.exists("\(dir)/index.json.1.p7s"))
            let bundle = try Shell.run([
                TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version",
                "1.1.0",
                "--cert", "\(pki)/signer1.pem", "--key", "\(pki)/signer1.key", "--image",
                "tee=\(sandbox.directory)/images/factory-tee.img",
                "--expires", "2021-01-01T00:00:00Z", "-o", "\(dir)/expired.ferry",
            ])
            #expect(bundle.status == FerryError.Code.expired.exitStatus, "\(bundle.output)")
            #expect(
                bundle.output.hasPrefix("ferry: error: the bundle expired at 2021-01-01T00:00:00Z (trusted time "),
                "\(bundle.output)")
            #expect(!TextFile.exists("\(dir)/expired.ferry"))
        }
    }

    /// The check every run of the ferry binary in the tests goes through (``Shell/run``) can fail.
    @Test(arguments: [
        ("ferry: error: settings 'x' is not valid JSON: nil", true),
        ("ferry: error: cannot open Optional(\"/tmp/a\")", true),
        ("ferry: error: slot '' does not exist", true),
        ("ferry: error: group \"\" is unknown", true),
        ("ferry: error: the health check () failed", true),
        ("2026-12-03T13:51:41+0000 warning ferry : [FerryCore] Switching back the apps and settings of group ", true),
        ("2026-12-03T13:51:41+0000 warning ferry : [FerryCore] Could not read nil", true),
        ("2026-12-03T13:51:41+0000 info ferry : [FerryCore] value nil is fine at info level", false),
        ("ferry: error: the vanilla image is nilpotent", false),
        ("Installed nil into group B", false),
    ])
    func userFacingTextWithOptionalsOrEmptyNamesIsCaught(_ line: String, _ caught: Bool) {
        #expect(UserFacingText.violations(in: "first line\n\(line)\nlast line").count == (caught ? 1 : 0), "\(line)")
    }
}

extension Sandbox {
    /// A small signed bundle of the factory TEE image as `dir/update.ferry`.
    func makeUpdateBundle(in dir: String) throws {
        try Shell.check([
            TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version", "1.1.0",
            "--cert", "\(directory)/pki/signer1.pem", "--key", "\(directory)/pki/signer1.key",
            "--image", "tee=\(directory)/images/factory-tee.img", "-o", "\(dir)/update.ferry",
        ])
    }
}

extension ConventionsTests {
    /// A command whose help lists --config takes the global options before its name too: it
    /// must be marked so (FerryCommand's argument normalization relies on the mark).
    @Test func everyCommandWithTheGlobalOptionsIsMarked() {
        var checked = 0
        func walk(_ type: any ParsableCommand.Type, _ path: [String]) {
            for sub in type.configuration.subcommands {
                let help = FerryCommand.helpText(for: path + [sub._commandName], columns: 200)
                if sub.configuration.subcommands.isEmpty {
                    #expect(
                        help.contains("--config <system.json>") == GlobalOptions.acceptsGlobalOptions(sub),
                        "\(path + [sub._commandName])")
                    checked += 1
                }
                walk(sub, path + [sub._commandName])
            }
        }
        walk(FerryCommand.self, [])
        #expect(checked > 20)
    }
}

extension ConventionsTests {
    /// docs/errors.md lists every error code with its exit status, and nothing else: the table
    /// and the code cannot drift apart.
    @Test func theErrorTableListsEveryCodeWithItsExitStatus() throws {
        let text = try TextFile.read("\(TestEnvironment.packageRoot)/docs/errors.md")
        var documented: [String: Int32] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
            guard cells.count > 3, let status = Int32(cells[1]), cells[2].hasPrefix("`"), cells[2].hasSuffix("`") else {
                continue
            }
            let name = String(cells[2].dropFirst().dropLast())
            #expect(documented[name] == nil, "\(name) is listed twice")
            documented[name] = status
        }
        let actual = Dictionary(uniqueKeysWithValues: FerryError.Code.all.map { ($0.name, $0.exitStatus) })
        #expect(documented == actual, "docs/errors.md and FerryError.Code differ")
        #expect(Set(actual.values).count == actual.count, "two codes share an exit status")
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
