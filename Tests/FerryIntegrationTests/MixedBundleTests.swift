import FerryBundle
import FerryCore
import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Mixed bundles: slot images together with apps and settings. The apps and settings are staged
/// by the install and activated only when the new group is confirmed; a rollback of the group
/// drops or switches them back; a failing health check at confirmation keeps the group unconfirmed.
@Suite(
    .serialized,
    .enabled(
        if: TestEnvironment.canUseLoopDevices, "needs root and /dev/loop-control (tools/test runs it as root in CI)"))
struct MixedBundleTests {
    struct Device {
        let sandbox: Sandbox
        var config: [String] { ["--config", sandbox.configurationPath] }
        var settingsStore: String { "\(sandbox.directory)/settings" }
        var appStore: String { "\(sandbox.directory)/apps" }
        var state: StateStore { StateStore(directory: "\(sandbox.directory)/state") }

        init(_ dir: String, bootloader: String = "uboot", settingsHealthCheck: String? = nil) throws {
            sandbox = try Sandbox.make(in: dir, bootloader: bootloader)
            var object =
                try JSONValue.parse(try readFile(sandbox.configurationPath), what: "system.json", code: .internal)
                .objectValue ?? [:]
            object["appStore"] = .string("apps")
            object["settingsStore"] = .string("settings")
            var settings: [String: JSONValue] = ["timeoutSeconds": .number(5)]
            if let settingsHealthCheck { settings["healthCheck"] = .string(settingsHealthCheck) }
            object["settings"] = .object(settings)
            try DurableFile.write(
                String(decoding: JSONValue.object(object).serialized(), as: UTF8.self), to: sandbox.configurationPath)
        }

        func ferry(_ arguments: [String]) throws -> Shell.Result {
            try Shell.run([TestEnvironment.ferryBinary] + arguments + config)
        }

        func boot(fail: Bool = false) throws -> Shell.Result {
            try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory] + (fail ? ["--fail"] : []),
                environment: ["FERRY": TestEnvironment.ferryBinary])
        }

        /// A bundle of the given parts, in this order: `modem` (a modem image of that many bytes),
        /// `app` (name, version, bytes), `settings` (name, text, merge patch).
        func bundle(
            version: String, modem: Int? = nil, app: (String, String, [UInt8])? = nil,
            settings: (String, String, Bool)? = nil,
            output: String
        ) throws {
            var images: [BundleWriter.Image] = []
            if let modem {
                try makeFile("\(sandbox.directory)/modem-\(version).img", bytes: seededBytes(count: modem, seed: 77))
                images.append(BundleWriter.Image(slotClass: "modem", path: "\(sandbox.directory)/modem-\(version).img"))
            }
            if let (name, appVersion, bytes) = app {
                try makeFile("\(sandbox.directory)/\(name)-\(appVersion).pkg", bytes: bytes)
                images.append(
                    BundleWriter.Image(
                        slotClass: name, path: "\(sandbox.directory)/\(name)-\(appVersion).pkg",
                        app: Manifest.AppInfo(name: name, version: appVersion, file: "\(name).pkg")))
            }
            if let (name, text, mergePatch) = settings {
                try DurableFile.write(text, to: "\(sandbox.directory)/settings-\(version)-\(name)")
                images.append(
                    BundleWriter.Image(
                        slotClass: name, path: "\(sandbox.directory)/settings-\(version)-\(name)",
                        settings: Manifest.SettingsInfo(name: name, format: "json", mergePatch: mergePatch)))
            }
            var options = BundleWriter.Options.forTests(
                compatible: "ferry-demo-x86_64", version: SemanticVersion(version)!, images: images,
                signers: [
                    BundleWriter.Signer(
                        certificate: "\(sandbox.directory)/pki/signer1.pem", key: "\(sandbox.directory)/pki/signer1.key"
                    )
                ])
            options.chunkSize = 1 << 20
            options.preset = 0
            try BundleWriter.create(options, output: output, logger: quietLogger)
        }

        /// Installs app nav 1.0 and carrier.json v1 on their own (active at once).
        func installBaseline(_ dir: String) throws {
            // A running system: booted once (so this boot has an ID).
            #expect(try boot().status == 0)
            try bundle(version: "1.0.0", app: ("nav", "1.0", [1, 2, 3]), output: "\(dir)/app.ferry")
            try bundle(
                version: "1.0.0", settings: ("carrier.json", #"{"apn": "internet", "mtu": 1500}"#, false),
                output: "\(dir)/settings.ferry")
            #expect(try ferry(["install", "\(dir)/app.ferry"]).status == 0)
            #expect(try ferry(["install", "\(dir)/settings.ferry"]).status == 0)
        }

        func carrier() throws -> JSONValue {
            try JSONValue.parse(try readFile("\(settingsStore)/carrier.json"), what: "carrier.json", code: .internal)
        }
        func currentApp() -> String? { FileSystem.linkTarget("\(appStore)/nav/current") }
        var v1: JSONValue { .object(["apn": .string("internet"), "mtu": .number(1500)]) }
        var patched: JSONValue { .object(["apn": .string("internet"), "mtu": .number(1400)]) }
    }

    @Test(arguments: ["uboot", "grub"])
    func partsActivateWhenTheGroupIsConfirmedAndGoBackWithIt(bootloader: String) async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir, bootloader: bootloader)
            try device.installBaseline(dir)
            try device.bundle(
                version: "1.1.0", modem: 2 << 20, app: ("nav", "2.0", [4, 5, 6]),
                settings: ("carrier.json", #"{"mtu": 1400}"#, true),
                output: "\(dir)/mixed.ferry")
            let install = try device.ferry(["install", "\(dir)/mixed.ferry"])
            #expect(install.status == 0, "\(install.output)")
            #expect(
                install.output.contains("staged nav 2.0, settings carrier.json until the group is confirmed"),
                "\(install.output)")
            // Staged, not active: the running group A keeps its app and settings.
            #expect(try device.carrier() == device.v1)
            #expect(device.currentApp() == "1.0")
            #expect(try device.state.groupParts()?.state == .staged)
            let status = try device.ferry(["status"]).output
            #expect(
                status.contains(
                    "Bundle parts:  nav 2.0, settings carrier.json (1.1.0, staged until group B is confirmed)"),
                "\(status)")
            // Confirming A again before the reboot leaves them staged.
            #expect(try device.ferry(["mark", "good", "A"]).status == 0)
            #expect(try device.state.groupParts()?.state == .staged)
            // So does boot-check run again in the same boot (a restarted service): no fallback.
            #expect(TextFile.exists("\(device.sandbox.directory)/state/boot-id"))
            #expect(try device.ferry(["boot-check"]).status == 0)
            #expect(try device.state.groupParts()?.state == .staged)

            let boot = try device.boot()
            #expect(boot.status == 0 && boot.output.contains("booted group B"), "\(boot.output)")
            #expect(try device.carrier() == device.patched)
            #expect(device.currentApp() == "2.0")
            #expect(try device.state.groupParts()?.state == .active)
            let json = try JSONValue.parse(
                Array(try device.ferry(["status", "--json"]).output.utf8), what: "status", code: .internal)
            #expect(json.objectValue?["groupParts"]?.objectValue?["state"] == .string("active"))

            // Switching back to group A takes its app and settings back too.
            #expect(try device.ferry(["mark", "active", "A"]).status == 0)
            #expect(try device.carrier() == device.v1)
            #expect(device.currentApp() == "1.0")
            #expect(try device.state.groupParts() == nil)
            #expect(!TextFile.exists("\(device.settingsStore)/.group-B"))
        }
    }

    @Test func aGroupThatNeverConfirmsDropsItsStagedParts() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            try device.installBaseline(dir)
            try device.bundle(
                version: "1.1.0", modem: 1 << 20, app: ("nav", "2.0", [4, 5, 6]),
                settings: ("carrier.json", #"{"mtu": 1400}"#, true),
                output: "\(dir)/mixed.ferry")
            #expect(try device.ferry(["install", "\(dir)/mixed.ferry"]).status == 0)
            for attempt in 1...3 {
                let boot = try device.boot(fail: true)
                #expect(boot.output.contains("booted group B"), "boot \(attempt): \(boot.output)")
                // On trial: still the old app and settings.
                #expect(try device.carrier() == device.v1)
                #expect(device.currentApp() == "1.0")
            }
            let back = try device.boot()
            #expect(back.output.contains("booted group A"), "\(back.output)")
            #expect(try device.carrier() == device.v1)
            #expect(device.currentApp() == "1.0")
            #expect(try device.state.groupParts() == nil)
            #expect(!TextFile.exists("\(device.settingsStore)/.group-B"))
        }
    }

    @Test func aFailingHealthCheckAtConfirmationSwitchesThePartsBackAndLeavesTheGroupUnconfirmed() async throws {
        try await withTemporaryDirectory { dir in
            let check = "\(dir)/check-settings"
            try DurableFile.write("#!/bin/sh\n! grep -q 9999 \"$FERRY_SETTINGS_FILE\"\n", to: check)
            try Shell.check(["chmod", "+x", check])
            try DurableFile.createDirectory("\(dir)/device")
            let device = try Device("\(dir)/device", settingsHealthCheck: check)
            try device.installBaseline(dir)
            try device.bundle(
                version: "1.1.0", modem: 1 << 20, app: ("nav", "2.0", [4, 5, 6]),
                settings: ("carrier.json", #"{"mtu": 9999}"#, true),
                output: "\(dir)/mixed.ferry")
            #expect(try device.ferry(["install", "\(dir)/mixed.ferry"]).status == 0)
            let boot = try device.boot()
            #expect(boot.status != 0, "\(boot.output)")
            #expect(boot.output.contains("settings 'carrier.json': health check"), "\(boot.output)")
            #expect(boot.output.contains("group B is not confirmed"), "\(boot.output)")
            #expect(try device.carrier() == device.v1)
            #expect(device.currentApp() == "1.0")
            #expect(try device.state.groupParts()?.state == .staged)
            let report = try StatusReport.gather(
                configuration: device.sandbox.configuration(), commandLine: KernelCommandLine(""),
                mounts: MountTable.current())
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "trial")
        }
    }

    @Test func malformedSettingsInAMixedBundleSwitchNothing() async throws {
        try await withTemporaryDirectory { dir in
            let device = try Device(dir)
            try device.installBaseline(dir)
            let environment = try device.ferry(["env", "list"]).output
            try device.bundle(
                version: "1.1.0", modem: 1 << 20, settings: ("carrier.json", #"{"mtu": "#, false),
                output: "\(dir)/mixed.ferry")
            let install = try device.ferry(["install", "\(dir)/mixed.ferry"])
            #expect(install.status == 41, "\(install.output)")
            #expect(install.output.contains("settings 'carrier.json'"), "\(install.output)")
            #expect(try device.carrier() == device.v1)
            #expect(try device.state.groupParts() == nil)
            let after = try device.ferry(["env", "list"]).output
            // The target group is bad (it was being written); A still boots first.
            #expect(after.contains("BOOT_ORDER=A B") || after.contains("ORDER=A B"), "\(environment)\n->\n\(after)")
            let boot = try device.boot()
            #expect(boot.output.contains("booted group A"), "\(boot.output)")
        }
    }

    @Test func settingsWithoutASettingsStoreAreRefusedBeforeAnythingIsWritten() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let environment = try Shell.run([
                TestEnvironment.ferryBinary, "env", "list", "--config", sandbox.configurationPath,
            ]).output
            let device = Device.init(unconfigured: sandbox)
            try device.bundle(
                version: "1.1.0", modem: 1 << 20, settings: ("carrier.json", "{}", false), output: "\(dir)/mixed.ferry")
            let install = try device.ferry(["install", "\(dir)/mixed.ferry"])
            #expect(install.status == 11, "\(install.output)")
            #expect(install.output.contains("names no settingsStore"), "\(install.output)")
            #expect(try device.ferry(["env", "list"]).output == environment)
        }
    }
}

extension MixedBundleTests.Device {
    init(unconfigured sandbox: Sandbox) { self.sandbox = sandbox }
}
