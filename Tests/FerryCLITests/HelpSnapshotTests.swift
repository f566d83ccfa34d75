import ArgumentParser
import FerryCLI
import FerrySystem
import FerryTestSupport
import Testing

/// `ferry --help` and every `ferry <command> --help` against committed snapshots.
///
/// To accept a deliberate change: `FERRY_UPDATE_SNAPSHOTS=1 swift test --filter HelpSnapshotTests`,
/// then review the diff of Tests/FerryCLITests/Snapshots/.
@Suite struct HelpSnapshotTests {
    static let commands: [[String]] = [
        [], ["status"], ["install"], ["write-slot"], ["mark"], ["boot-check"], ["env"], ["env", "list"],
        ["env", "get"], ["env", "set"],
        ["env", "unset"], ["bundle"], ["bundle", "create"], ["bundle", "info"], ["bundle", "verify"],
        ["bundle", "encrypt"],
        ["bundle", "index"], ["check"], ["update"], ["apps"], ["apps", "list"], ["apps", "rollback"], ["settings"],
        ["settings", "list"], ["settings", "rollback"], ["pin"], ["delta"], ["delta", "create"], ["delta", "apply"],
    ]

    @Test(arguments: commands)
    func helpMatchesSnapshot(_ command: [String]) throws {
        let help = FerryCommand.helpText(for: command, columns: 100)
        let name = (["ferry"] + command).joined(separator: "-")
        let path = "\(TestEnvironment.packageRoot)/Tests/FerryCLITests/Snapshots/\(name).txt"
        if ProcessEnvironment.variables["FERRY_UPDATE_SNAPSHOTS"] == "1" {
            try DurableFile.write(help, to: path)
        }
        let expected = try TextFile.read(path)
        #expect(help == expected, "help of '\(name)' changed; see the test's doc comment to update the snapshot")
    }

    @Test func everySubcommandHasASnapshot() {
        var names: [[String]] = []
        func walk(_ type: any ParsableCommand.Type, _ path: [String]) {
            for sub in type.configuration.subcommands {
                names.append(path + [sub._commandName])
                walk(sub, path + [sub._commandName])
            }
        }
        walk(FerryCommand.self, [])
        #expect(Set(names) == Set(Self.commands.filter { !$0.isEmpty }))
    }
}

@Suite struct ArgumentTests {
    @Test(arguments: [
        ["status", "--bogus"], ["no-such-command"], ["status", "extra"], ["status", "--config"],
        ["--config"], ["status", "--json=yes"],
    ])
    func wrongArgumentsExitWithUsageStatus(_ arguments: [String]) async {
        #expect(await FerryCommand.execute(arguments) == 2)
    }

    @Test func helpAndVersionExitZero() async {
        #expect(await FerryCommand.execute(["--help"]) == 0)
        #expect(await FerryCommand.execute(["status", "--help"]) == 0)
        #expect(await FerryCommand.execute(["--version"]) == 0)
    }

    @Test func parsesStatusOptions() throws {
        let parsed = try FerryCommand.parseAsRoot(["status", "--json", "--config", "/x/system.json"])
        let description = String(describing: parsed)
        #expect(description.contains("json: true"))
        #expect(description.contains("/x/system.json"))
    }
}

@Suite struct StatusCommandTests {
    @Test func statusOnASandboxSucceeds() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            #expect(await FerryCommand.execute(["status", "--config", sandbox.configurationPath]) == 0)
            #expect(await FerryCommand.execute(["status", "--json", "--config", sandbox.configurationPath]) == 0)
        }
    }

    @Test func statusErrorsExitWithTheirClassStatus() async throws {
        try await withTemporaryDirectory { dir in
            #expect(await FerryCommand.execute(["status", "--config", "\(dir)/missing.json"]) == 10)
            try DurableFile.write("{\"compatible\": \"x\", \"slotz\": {}}", to: "\(dir)/bad.json")
            #expect(await FerryCommand.execute(["status", "--config", "\(dir)/bad.json"]) == 11)
            let sandbox = try Sandbox.make(in: "\(dir)/sandbox")
            try Shell.check(["rm", sandbox.diskPath])
            #expect(await FerryCommand.execute(["status", "--config", sandbox.configurationPath]) == 20)
        }
    }

    @Test func errorLineIsOneLine() {
        let error = FerryError(code: .io, message: "reading 'x' failed:\nsecond line")
        let line = FerryCommand.errorLine(error)
        #expect(line.hasPrefix("ferry: error: "))
        #expect(line.filter { $0 == "\n" }.count == 1 && line.hasSuffix("\n"))
    }
}
