import FerryBundle
import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// App-only updates on sandbox devices (no slot is written, so no root is needed): install,
/// activation by an atomic link switch, the previous version kept, rollback by command and by a
/// failing or hanging health check, bad names, and a kill in the middle of an install.
@Suite(.serialized) struct AppUpdateTests {
    struct Device {
        let sandbox: Sandbox
        var store: String { "\(sandbox.directory)/apps" }
        var config: [String] { ["--config", sandbox.configurationPath] }

        init(_ dir: String, healthCheck: String? = nil, timeoutSeconds: Int = 5) throws {
            sandbox = try Sandbox.make(in: dir)
            var object =
                try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
                .objectValue ?? [:]
            object["appStore"] = .string("apps")
            var apps: [String: JSONValue] = ["keep": .number(2), "timeoutSeconds": .number(Double(timeoutSeconds))]
            if let healthCheck { apps["healthCheck"] = .string(healthCheck) }
            object["apps"] = .object(apps)
            try DurableFile.write(
                String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)
        }

        func ferry(_ arguments: [String]) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary] + arguments + config)
        }

        /// A bundle carrying `bytes` as app `name` at `version` (file `name.pkg`).
        func bundle(_ name: String, _ version: String, _ bytes: [UInt8], output: String) throws {
            let file = "\(sandbox.directory)/\(name).pkg"
            try makeFile(file, bytes: bytes)
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.0.0")!,
                images: [
                    BundleWriter.Image(
                        slotClass: name, path: file,
                        app: Manifest.AppInfo(name: name, version: version, file: "\(name).pkg"))
                ],
                signers: [
                    BundleWriter.Signer(
                        certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key"
                    )
                ])
            options.chunkSize = 1 << 20
            options.preset = 0
            try BundleWriter.create(options, output: output, logger: quietLogger)
        }

        /// A bundle carrying the tar archive at `archive` as app `name` at `version`, unpacked on the device.
        func archiveBundle(_ name: String, _ version: String, archive: String, output: String) throws {
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.0.0")!,
                images: [
                    BundleWriter.Image(
                        slotClass: name, path: archive,
                        app: Manifest.AppInfo(name: name, version: version, file: "\(name).tar", unpack: true))
                ],
                signers: [
                    BundleWriter.Signer(
                        certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key"
                    )
                ])
            options.chunkSize = 1 << 20
            options.preset = 0
            try BundleWriter.create(options, output: output, logger: quietLogger)
        }

        func current(_ name: String) -> String? { FileSystem.linkTarget("\(store)/\(name)/current") }
        func active(_ name: String) throws -> [UInt8] { try readFile("\(store)/\(name)/current/\(name).pkg") }
    }

    @Test func installActivateKeepAndRollBack() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let environment = try device.ferry(["env", "list"]).output
            let v1 = seededBytes(count: 300_000, seed: 1)
            let v2 = seededBytes(count: 200_000, seed: 2)
            try device.bundle("nav", "1.0", v1, output: "\(dir)/nav-1.ferry")
            try device.bundle("nav", "2.0", v2, output: "\(dir)/nav-2.ferry")
            let first = try device.ferry(["install", "\(dir)/nav-1.ferry"])
            #expect(
                first.status == 0 && first.output.contains("Installed and activated nav 1.0 (no reboot needed)"),
                "\(first.output)")
            #expect(device.current("nav") == "1.0")
            #expect(try device.active("nav") == v1)
            #expect(try device.ferry(["install", "\(dir)/nav-2.ferry"]).status == 0)
            #expect(device.current("nav") == "2.0")
            #expect(try device.active("nav") == v2)
            let list = try device.ferry(["apps", "list"])
            #expect(list.output == "nav: active 2.0, previous 1.0, installed 1.0 2.0\n", "\(list.output)")
            let rollback = try device.ferry(["apps", "rollback", "nav"])
            #expect(rollback.status == 0 && rollback.output.contains("from 2.0 to 1.0"), "\(rollback.output)")
            #expect(device.current("nav") == "1.0")
            #expect(try device.active("nav") == v1)
            let status = try JSONValue.parse(
                Array(try device.ferry(["status", "--json"]).output.utf8), what: "status", code: .internal)
            #expect(
                status.objectValue?["apps"]
                    == .array([
                        .object([
                            "name": .string("nav"), "current": .string("1.0"), "previous": .string("2.0"),
                            "versions": .array([.string("1.0"), .string("2.0")]),
                        ])
                    ]))
            // No slot, no group switch, no boot environment change.
            #expect(try device.ferry(["env", "list"]).output == environment)
        }
    }

    @Test(arguments: ["fail", "hang"])
    func aFailingOrHangingHealthCheckSwitchesBack(_ mode: String) async throws {
        try await withTemporaryDirectory { dir in
            let script = "\(dir)/check.sh"
            let device = try Device(dir, healthCheck: script, timeoutSeconds: 1)
            try DurableFile.write(
                "#!/bin/sh\n[ \"$FERRY_APP_VERSION\" = 2.0 ] || exit 0\n\(mode == "fail" ? "exit 7" : "sleep 30")\n",
                to: script)
            try Shell.check(["chmod", "+x", script])
            try device.bundle("nav", "0.9", seededBytes(count: 1000, seed: 0), output: "\(dir)/nav-0.ferry")
            try device.bundle("nav", "1.0", seededBytes(count: 1000, seed: 1), output: "\(dir)/nav-1.ferry")
            try device.bundle("nav", "2.0", seededBytes(count: 1000, seed: 2), output: "\(dir)/nav-2.ferry")
            #expect(try device.ferry(["install", "\(dir)/nav-0.ferry"]).status == 0)
            #expect(try device.ferry(["install", "\(dir)/nav-1.ferry"]).status == 0)
            let bad = try device.ferry(["install", "\(dir)/nav-2.ferry"])
            #expect(bad.status == FerryError.Code.healthCheckFailed.exitStatus, "\(bad.output)")
            #expect(
                bad.output.contains(
                    mode == "fail"
                        ? "failed with status 7; switched back to 1.0" : "timed out after 1 s; switched back to 1.0"),
                "\(bad.output)")
            // Both links as before the install: a later rollback must not return to the failed build.
            #expect(device.current("nav") == "1.0")
            #expect(FileSystem.linkTarget("\(device.store)/nav/previous") == "0.9")
            let rollback = try device.ferry(["apps", "rollback", "nav"])
            #expect(rollback.status == 0 && rollback.output.contains("from 1.0 to 0.9"), "\(rollback.output)")
            #expect(device.current("nav") == "0.9")
        }
    }

    /// What a killed install leaves in the stores (a temporary link, a partial version, a
    /// temporary document) is not counted by `apps list` or `status`, and the next install or
    /// boot-check removes it.
    @Test(arguments: ["install", "boot-check"])
    func leftoversOfKilledWritesAreNotCountedAndAreRemoved(_ command: String) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            try device.bundle("nav", "1.0", seededBytes(count: 1000, seed: 1), output: "\(dir)/nav-1.ferry")
            try device.bundle("map", "1.0", seededBytes(count: 1000, seed: 2), output: "\(dir)/map-1.ferry")
            #expect(try device.ferry(["install", "\(dir)/nav-1.ferry"]).status == 0)
            let app = "\(device.store)/nav"
            try Shell.check(["ln", "-s", "1.0", "\(app)/current.tmp-4242"])
            try Shell.check(["mkdir", "\(app)/.2.0.partial-4242"])
            try makeFile("\(app)/.2.0.partial-4242/nav.pkg", bytes: seededBytes(count: 5000, seed: 3))
            try makeFile("\(app)/.current.tmp-4243", bytes: [1, 2, 3])
            let list = try device.ferry(["apps", "list"])
            #expect(list.output == "nav: active 1.0, previous none, installed 1.0\n", "\(list.output)")
            let status = try JSONValue.parse(
                Array(try device.ferry(["status", "--json"]).output.utf8), what: "status", code: .internal)
            guard case .array(let apps)? = status.objectValue?["apps"] else {
                Issue.record("status --json has no apps: \(status)")
                return
            }
            #expect(apps.first?.objectValue?["versions"] == .array([.string("1.0")]), "\(status)")

            let result =
                command == "install"
                ? try device.ferry(["install", "\(dir)/map-1.ferry"]) : try device.ferry(["boot-check"])
            #expect(result.status == 0, "\(result.output)")
            #expect(FileSystem.entries(app).sorted() == ["1.0", "current"], "\(FileSystem.entries(app))")
        }
    }

    @Test func aHealthCheckThatCannotRunDeactivatesTheApp() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, healthCheck: "\(dir)/no-such-check")
            try device.bundle("nav", "1.0", seededBytes(count: 1000, seed: 1), output: "\(dir)/nav-1.ferry")
            let result = try device.ferry(["install", "\(dir)/nav-1.ferry"])
            #expect(result.status == FerryError.Code.healthCheckFailed.exitStatus, "\(result.output)")
            #expect(
                result.output.contains("could not run (") && result.output.contains("deactivated (no earlier version)"),
                "\(result.output)")
            #expect(device.current("nav") == nil)
            // Nothing to return to: its own exit status, one line.
            let rollback = try device.ferry(["apps", "rollback", "nav"])
            #expect(rollback.status == FerryError.Code.nothingToRollBack.exitStatus, "\(rollback.output)")
            #expect(rollback.output.hasPrefix("ferry: error: app 'nav' has no previous version"), "\(rollback.output)")
        }
    }

    @Test(arguments: ["a/b", "..", ".hidden", "current"])
    func badAppNamesAreRefusedAndNothingChanges(_ name: String) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            try device.bundle("nav", "1.0", seededBytes(count: 1000, seed: 1), output: "\(dir)/nav-1.ferry")
            #expect(try device.ferry(["install", "\(dir)/nav-1.ferry"]).status == 0)
            let before = FileSystem.entries(device.store).sorted()
            // Crafted with the library (the command line would refuse such names itself).
            let made = Result { try device.bundle(name, "1.0", [1, 2, 3], output: "\(dir)/bad.ferry") }
            if case .success = made {
                let result = try device.ferry(["install", "\(dir)/bad.ferry"])
                #expect(result.status == FerryError.Code.bundleInvalid.exitStatus, "\(name): \(result.output)")
                #expect(result.output.hasPrefix("ferry: error: ") && result.output.split(separator: "\n").count == 1)
            }
            #expect(FileSystem.entries(device.store).sorted() == before, "\(name)")
            #expect(device.current("nav") == "1.0")
        }
    }

    @Test func aKilledInstallLeavesAWholeVersionActive() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let old = seededBytes(count: 1 << 20, seed: 3)
            let new = seededBytes(count: 24 << 20, seed: 4)
            try device.bundle("map", "1.0", old, output: "\(dir)/map-1.ferry")
            try device.bundle("map", "2.0", new, output: "\(dir)/map-2.ferry")
            #expect(try device.ferry(["install", "\(dir)/map-1.ferry"]).status == 0)
            let install = [TestEnvironment.ferryBinary, "install", "\(dir)/map-2.ferry"] + device.config
            let cut = try killRepeatedly(install, attempts: 12, cuts: 3, firstDelay: 0.05, step: 0.05) { attempt in
                // Whatever the moment: the active version is complete, old or new.
                let active = try device.active("map")
                #expect(active == old || active == new, "kill \(attempt): the active file is neither version")
                return device.current("map") == "2.0"
            }
            #expect(cut >= 1, "no install was cut in the middle")
            // The next run completes (a stale staging directory does not get in the way).
            let again = try device.ferry(["install", "\(dir)/map-2.ferry"])
            #expect(again.status == 0 || again.output.contains("already the active version"), "\(again.output)")
            #expect(try device.active("map") == new)
            #expect(!FileSystem.entries("\(device.store)/map").contains { $0.contains(".partial-") })
        }
    }

    @Test func anArchiveIsUnpackedWithItsFoldersAndLinks() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device("\(dir)/device")
            let source = "\(dir)/src"
            try DurableFile.createDirectory("\(source)/bin")
            try DurableFile.write("#!/bin/sh\necho nav\n", to: "\(source)/bin/run")
            try Shell.check(["chmod", "4755", "\(source)/bin/run"])
            try Shell.check(["ln", "-s", "bin/run", "\(source)/start"])
            try Shell.check(["ln", "\(source)/bin/run", "\(source)/hard"])
            try Shell.check(["tar", "--format=posix", "-C", source, "-cf", "\(dir)/nav.tar", "."])
            try device.archiveBundle("nav", "3.0", archive: "\(dir)/nav.tar", output: "\(dir)/nav.ferry")
            let result = try device.ferry(["install", "\(dir)/nav.ferry"])
            #expect(result.status == 0, "\(result.output)")
            let version = "\(device.store)/nav/3.0"
            #expect(try readFile("\(version)/bin/run") == Array("#!/bin/sh\necho nav\n".utf8))
            #expect(FileSystem.linkTarget("\(version)/start") == "bin/run")
            #expect(try readFile("\(version)/hard") == Array("#!/bin/sh\necho nav\n".utf8))
            // Permission bits kept, set-user-ID dropped.
            #expect(try Shell.check(["stat", "-c", "%a", "\(version)/bin/run"]).hasPrefix("755\n"))
            #expect(device.current("nav") == "3.0")
        }
    }

    @Test(arguments: [
        ("dotdot", "'../evil'"),
        ("absolute-link", "is a link to the absolute path '/etc/passwd'"),
        ("link-outside", "outside the app's folder"),
        ("through-link", "lies under 'd', which is not a directory of the archive"),
        ("fifo", "is a FIFO"),
    ])
    func archivesThatReachOutsideTheStoreAreRefusedAndNothingChanges(_ kind: String, _ expected: String) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device("\(dir)/device")
            try device.bundle("nav", "1.0", [1, 2, 3], output: "\(dir)/nav-1.ferry")
            #expect(try device.ferry(["install", "\(dir)/nav-1.ferry"]).status == 0)
            let work = "\(dir)/work"
            try DurableFile.createDirectory("\(work)/e")
            try DurableFile.write("x", to: "\(work)/f")
            try DurableFile.write("y", to: "\(work)/e/x")
            let archive = "\(dir)/bad.tar"
            let tar = ["tar", "--format=posix", "-C", work, "-cf", archive]
            switch kind {
            case "dotdot": try Shell.check(tar + ["-P", "--transform", "s,^f,../evil,", "f"])
            case "absolute-link":
                try Shell.check(["ln", "-s", "/etc/passwd", "\(work)/abs"])
                try Shell.check(tar + ["abs"])
            case "link-outside":
                try Shell.check(["ln", "-s", "../../x", "\(work)/up"])
                try Shell.check(tar + ["up"])
            case "through-link":
                try Shell.check(["ln", "-s", "e", "\(work)/d"])
                try Shell.check(tar + ["--transform", "s,^e/x,d/x,", "d", "e/x"])
            default:
                try Shell.check(["mkfifo", "\(work)/p"])
                try Shell.check(tar + ["p"])
            }
            try device.archiveBundle("nav", "2.0", archive: archive, output: "\(dir)/bad.ferry")
            let result = try device.ferry(["install", "\(dir)/bad.ferry"])
            #expect(result.status == 41, "\(kind): \(result.output)")
            #expect(result.output.contains(expected), "\(kind): \(result.output)")
            #expect(device.current("nav") == "1.0")
            #expect(FileSystem.entries("\(device.store)/nav").sorted() == ["1.0", "current"], "\(kind)")
            #expect(!TextFile.exists("/tmp/x") || kind != "through-link")
        }
    }
}
