import FerryBundle
import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Settings updates on sandbox devices: JSON replaced or merge-patched, XML checked by libxml2 and
/// an XSD, the previous version kept, rollback by command and by a failing health check, and
/// every malformed document refused with the active one untouched.
@Suite(.serialized) struct SettingsUpdateTests {
    struct Device {
        let sandbox: Sandbox
        var store: String { "\(sandbox.directory)/settings" }
        var config: [String] { ["--config", sandbox.configurationPath] }

        init(_ dir: String, healthCheck: String? = nil) throws {
            sandbox = try Sandbox.make(in: dir)
            var object =
                try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
                .objectValue ?? [:]
            object["settingsStore"] = .string("settings")
            var settings: [String: JSONValue] = [
                "schemas": .object(["region.xml": .string("region.xsd")]), "timeoutSeconds": .number(1),
            ]
            if let healthCheck { settings["healthCheck"] = .string(healthCheck) }
            object["settings"] = .object(settings)
            try DurableFile.write(
                String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)
            try DurableFile.write(
                """
                <?xml version="1.0"?>
                <xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
                  <xs:element name="region"><xs:complexType><xs:attribute name="code" type="xs:string" use="required"/></xs:complexType></xs:element>
                </xs:schema>
                """, to: "\(sandbox.directory)/region.xsd")
        }

        func ferry(_ arguments: [String]) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary] + arguments + config)
        }

        /// Bundles `text` as settings `name` (the file keeps `name`'s extension) and installs it.
        /// Bundles `text` as settings `name` into `output`.
        func bundle(_ name: String, _ text: String, mergePatch: Bool = false, output: String) throws {
            let file = "\(output).payload"
            try DurableFile.write(text, to: file)
            var arguments = [
                TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version",
                "1.0.0",
                "--cert", "\(sandbox.directory)/pki/signer1.pem", "--key", "\(sandbox.directory)/pki/signer1.key",
                "--settings", "\(name)=\(file)", "-o", output,
            ]
            if mergePatch { arguments.append("--merge-patch") }
            _ = try Shell.check(arguments)
        }

        /// Bundles `text` as settings `name` with the library (which, unlike `ferry bundle create`,
        /// does not check documents: what a bundle made elsewhere may carry).
        func libraryBundle(_ name: String, _ text: String, format: String, mergePatch: Bool, output: String) throws {
            let file = "\(output).payload"
            try DurableFile.write(text, to: file)
            var options = BundleWriter.Options(
                compatible: "ferry-demo-x86_64", version: SemanticVersion("1.0.0")!,
                images: [
                    BundleWriter.Image(
                        slotClass: name, path: file,
                        settings: Manifest.SettingsInfo(name: name, format: format, mergePatch: mergePatch))
                ],
                signers: [
                    BundleWriter.Signer(
                        certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key"
                    )
                ])
            options.chunkSize = 1 << 20
            try BundleWriter.create(options, output: output, logger: quietLogger)
        }

        func install(_ name: String, _ text: String, mergePatch: Bool = false, dir: String) throws -> Shell.Result {
            try bundle(name, text, mergePatch: mergePatch, output: "\(dir)/settings.ferry")
            return try ferry(["install", "\(dir)/settings.ferry"])
        }

        func active(_ name: String) throws -> String {
            String(decoding: try readFile("\(store)/\(name)"), as: UTF8.self)
        }
    }

    @Test func jsonReplacedMergePatchedAndRolledBack() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            let first = try device.install(
                "carrier.json", #"{"apn": "internet", "mtu": 1500, "roaming": true}"#, dir: dir)
            #expect(first.status == 0 && first.output.contains("settings carrier.json"), "\(first.output)")
            let patched = try device.install(
                "carrier.json", #"{"mtu": 1400, "roaming": null, "ims": {"enabled": true}}"#, mergePatch: true, dir: dir
            )
            #expect(patched.status == 0, "\(patched.output)")
            let value = try JSONValue.parse(
                try readFile("\(device.store)/carrier.json"), what: "carrier", code: .internal)
            #expect(
                value
                    == .object([
                        "apn": .string("internet"), "mtu": .number(1400), "ims": .object(["enabled": .bool(true)]),
                    ]))
            #expect(try device.ferry(["settings", "list"]).output == "carrier.json (previous version kept)\n")
            let status = try JSONValue.parse(
                Array(try device.ferry(["status", "--json"]).output.utf8), what: "status", code: .internal)
            #expect(
                status.objectValue?["settings"]
                    == .array([.object(["name": .string("carrier.json"), "previousKept": .bool(true)])]))
            #expect(try device.ferry(["settings", "rollback", "carrier.json"]).status == 0)
            #expect(try device.active("carrier.json").contains("\"roaming\""))
        }
    }

    /// Each bad document is refused by the device (a bundle made with the library, which does
    /// not check), and, where no device configuration is needed to know it (everything but the
    /// XSD), already by `ferry bundle create`, with the device's own message.
    @Test(arguments: [
        (
            "malformed JSON", "carrier.json", "json", "{\n  \"apn\": \"internet\",\n  \"mtu\": 1400,,\n}", false,
            "settings 'carrier.json' is not valid JSON: line 3, column 15: expected a key in double quotes, found ','",
            true
        ),
        (
            "truncated JSON", "carrier.json", "json", #"{"apn": "#, false,
            "settings 'carrier.json' is not valid JSON: line 1, column 9: the document ends where a value was expected",
            true
        ),
        (
            "malformed XML", "region.xml", "xml", "<region code='eu'>", false,
            "settings 'region.xml' is not well-formed XML", true
        ),
        ("XML that fails its XSD", "region.xml", "xml", "<region/>", false, nil, false),
        // (`ferry bundle create --merge-patch` applies to JSON documents only: this one is XML to it.)
        (
            "a merge patch against XML", "region.xml", "xml", #"{"code": "us"}"#, true,
            "settings 'region.xml' is not well-formed XML", false
        ),
        // (On the device, the payload's member name, made of the settings name, is refused first.)
        ("a name with a slash", "a/b.json", "json", "{}", false, "settings name 'a/b.json' is not a plain name", false),
        ("a name with dots", "..", "json", "{}", false, "settings name '..' is not a plain name", false),
    ])
    func badDocumentsAreRefusedAndNothingChanges(
        _ what: String, _ name: String, _ format: String, _ text: String, _ mergePatch: Bool, _ hostRefusal: String?,
        _ sameMessage: Bool
    ) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            #expect(try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir).status == 0)
            #expect(try device.install("region.xml", "<region code='eu'/>", dir: dir).status == 0)
            let before = FileSystem.entries(device.store).sorted()
            let carrier = try device.active("carrier.json")
            let region = try device.active("region.xml")

            var deviceError: String?
            if case .success = Result(catching: {
                try device.libraryBundle(name, text, format: format, mergePatch: mergePatch, output: "\(dir)/bad.ferry")
            }) {
                let result = try device.ferry(["install", "\(dir)/bad.ferry"])
                #expect(result.status == FerryError.Code.bundleInvalid.exitStatus, "\(what): \(result.output)")
                #expect(
                    result.output.hasPrefix("ferry: error: ") && result.output.split(separator: "\n").count == 1,
                    "\(what): \(result.output)")
                deviceError = result.output
            }
            #expect(FileSystem.entries(device.store).sorted() == before, "\(what)")
            #expect(try device.active("carrier.json") == carrier && device.active("region.xml") == region, "\(what)")

            // The host refuses what every device refuses, with the same message.
            let file = "\(dir)/document.\(format)"
            try DurableFile.write(text, to: file)
            var arguments = [
                TestEnvironment.ferryBinary, "bundle", "create", "--compatible", "ferry-demo-x86_64", "--version",
                "1.0.0",
                "--cert", "\(device.sandbox.directory)/pki/signer1.pem", "--key",
                "\(device.sandbox.directory)/pki/signer1.key",
                "--settings", "\(name)=\(file)", "-o", "\(dir)/host.ferry",
            ]
            if mergePatch { arguments.append("--merge-patch") }
            let host = try Shell.run(arguments)
            if let hostRefusal {
                #expect(host.status == FerryError.Code.bundleInvalid.exitStatus, "\(what): \(host.output)")
                #expect(host.output.hasPrefix("ferry: error: \(hostRefusal)"), "\(what): \(host.output)")
                if let deviceError, sameMessage {
                    #expect(deviceError == host.output, "\(what): the device and the host say it differently")
                }
            } else {
                #expect(host.status == 0, "\(what): the host cannot know the device's XSD: \(host.output)")
            }
        }
    }

    /// Temporary documents of a killed replacement or validation are not listed and are removed
    /// by the next boot-check.
    @Test func leftoversOfKilledWritesAreNotListedAndAreRemoved() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            #expect(try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir).status == 0)
            try makeFile("\(device.store)/.carrier.json.tmp-4242", bytes: Array(#"{"apn": "half"#.utf8))
            try makeFile("\(device.store)/.carrier.json.candidate-4243", bytes: Array(#"{"apn": "x"}"#.utf8))
            try makeFile("\(device.store)/region.xml.tmp-4244", bytes: Array("<region".utf8))
            let list = try device.ferry(["settings", "list"])
            #expect(list.output == "carrier.json\n", "\(list.output)")
            #expect(try device.ferry(["boot-check"]).status == 0)
            #expect(
                FileSystem.entries(device.store).sorted() == ["carrier.json"], "\(FileSystem.entries(device.store))")
        }
    }

    @Test func aMergePatchAgainstAnActiveDocumentThatIsNotJSONIsRefused() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            #expect(try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir).status == 0)
            // Someone left something that is not JSON under the name.
            try DurableFile.write("apn=internet\n", to: "\(device.store)/carrier.json")
            let result = try device.install("carrier.json", #"{"mtu": 1400}"#, mergePatch: true, dir: dir)
            #expect(result.status == FerryError.Code.bundleInvalid.exitStatus, "\(result.output)")
            #expect(result.output.contains("a JSON merge patch cannot apply to"), "\(result.output)")
            #expect(try device.active("carrier.json") == "apn=internet\n")
        }
    }

    @Test func aHealthCheckThatCannotRunRemovesTheNewDocument() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, healthCheck: "\(dir)/no-such-check")
            let result = try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir)
            #expect(result.status == FerryError.Code.healthCheckFailed.exitStatus, "\(result.output)")
            #expect(
                result.output.contains("could not run (") && result.output.contains("removed (no earlier version)"),
                "\(result.output)")
            #expect(!TextFile.exists("\(device.store)/carrier.json"))
        }
    }

    @Test func aFailingHealthCheckPutsThePreviousDocumentBack() async throws {
        try await withTemporaryDirectory { dir in
            let script = "\(dir)/check.sh"
            let device = try Device(dir, healthCheck: script)
            try DurableFile.write("#!/bin/sh\ngrep -q broken \"$FERRY_SETTINGS_FILE\" && exit 3\nexit 0\n", to: script)
            try Shell.check(["chmod", "+x", script])
            #expect(try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir).status == 0)
            let bad = try device.install("carrier.json", #"{"apn": "broken"}"#, dir: dir)
            #expect(bad.status == FerryError.Code.healthCheckFailed.exitStatus, "\(bad.output)")
            #expect(bad.output.contains("failed with status 3; the previous version is back"), "\(bad.output)")
            #expect(try device.active("carrier.json") == #"{"apn": "internet"}"#)
        }
    }

    @Test func aKilledInstallLeavesTheOldOrTheNewDocumentWhole() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            // Big enough (about 12 MiB) that the install takes a while to read, check and write.
            let old = #"{"apn": "internet"}"#
            let entries = (0..<400_000).map { "\"k\($0)\": \($0)" }.joined(separator: ", ")
            let new = "{\(entries)}"
            #expect(try device.install("carrier.json", old, dir: dir).status == 0)
            try device.bundle("carrier.json", new, output: "\(dir)/new.ferry")
            let install = [TestEnvironment.ferryBinary, "install", "\(dir)/new.ferry"] + device.config
            let cut = try killRepeatedly(install, attempts: 16, cuts: 4, firstDelay: 0.03, step: 0.04) { attempt in
                // Whatever the moment: the active document is complete, old or new.
                let active = try device.active("carrier.json")
                #expect(active == old || active == new, "kill \(attempt): the active document is neither version")
                return active == new
            }
            #expect(cut >= 1, "no install was cut in the middle")
            let again = try device.ferry(["install", "\(dir)/new.ferry"])
            #expect(again.status == 0, "\(again.output)")
            #expect(try device.active("carrier.json") == new)
            #expect(!FileSystem.entries(device.store).contains { $0.contains(".tmp-") || $0.contains(".candidate-") })
        }
    }

    @Test func anActivationCutBeforeItsHealthCheckPassedIsSwitchedBackByBootCheck() async throws {
        try await withTemporaryDirectory { dir in
            let script = "\(dir)/check.sh"
            try DurableFile.createDirectory("\(dir)/device")
            let device = try Device("\(dir)/device", healthCheck: script)
            try DurableFile.write("#!/bin/sh\ngrep -q slow \"$FERRY_SETTINGS_FILE\" && sleep 0.8\nexit 0\n", to: script)
            try Shell.check(["chmod", "+x", script])
            #expect(try device.install("carrier.json", #"{"apn": "internet"}"#, dir: dir).status == 0)
            try device.bundle("carrier.json", #"{"apn": "slow"}"#, output: "\(dir)/slow.ferry")
            let process = try SpawnedProcess(
                [TestEnvironment.ferryBinary, "install", "\(dir)/slow.ferry"] + device.config)
            // Wait until the new document is active and its (slow) health check runs, then cut.
            for _ in 0..<100 where try device.active("carrier.json") != #"{"apn": "slow"}"# { sleepSeconds(0.02) }
            #expect(try device.active("carrier.json") == #"{"apn": "slow"}"#)
            #expect(process.kill() == nil, "the install ended before it was cut")
            #expect(TextFile.exists("\(device.sandbox.directory)/state/install-parts.json"))
            // The next boot switches it back: its health check never passed.
            let check = try device.ferry(["boot-check"])
            #expect(check.status == 0, "\(check.output)")
            #expect(try device.active("carrier.json") == #"{"apn": "internet"}"#)
            #expect(!TextFile.exists("\(device.sandbox.directory)/state/install-parts.json"))
            #expect(!TextFile.exists("\(device.store)/.install"))
        }
    }
}
