import FerryCLI
import FerryCore
import FerrySystem
import FerryTestSupport
import Testing

/// mark, env and boot-check through the CLI on sandbox devices, rollback end to end with
/// tools/sandbox-boot, and the bad inputs of boot control.
@Suite(.serialized) struct BootControlCommandTests {
    func ferry(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([TestEnvironment.ferryBinary] + arguments)
    }

    func boot(_ sandbox: Sandbox, fail: Bool) throws -> String {
        let result = try Shell.run(
            ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory] + (fail ? ["--fail"] : []),
            environment: ["FERRY": TestEnvironment.ferryBinary])
        #expect(result.status == 0, "sandbox-boot: \(result.output)")
        return result.output.split(separator: "\n").first { $0.hasPrefix("booted group ") }.map {
            String($0.dropFirst(13))
        } ?? ""
    }

    func status(_ sandbox: Sandbox) throws -> StatusReport {
        try StatusReport.gather(
            configuration: sandbox.configuration(), commandLine: KernelCommandLine(""), mounts: MountTable.current())
    }

    @Test(arguments: ["uboot", "grub"])
    func bootCheckAgainBeforeTheRebootIsNoFallback(bootloader: String) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: bootloader)
            // A running system (this boot has an ID), then a switch to B, then boot-check again
            // (a restarted service) before any reboot.
            #expect(try boot(sandbox, fail: false) == "A")
            #expect(try ferry(["mark", "active", "B", "--config", sandbox.configurationPath]).status == 0)
            let again = try ferry(["boot-check", "--config", sandbox.configurationPath])
            #expect(again.status == 0 && !again.output.contains("rolled back"), "\(again.output)")
            let report = try status(sandbox)
            #expect(report.primary == "B" && report.rollback == nil)
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "trial")
            // The reboot then tries B; a later fallback is still noticed.
            #expect(try boot(sandbox, fail: true) == "B")
            if bootloader == "grub" { #expect(try boot(sandbox, fail: false) == "A") }
            if bootloader == "uboot" {
                for _ in 1...2 { #expect(try boot(sandbox, fail: true) == "B") }
                #expect(try boot(sandbox, fail: false) == "A")
            }
            #expect(try status(sandbox).rollback?.from == "B")
        }
    }

    @Test func ubootRollbackAfterThreeFailedTries() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: "uboot")
            #expect(try ferry(["mark", "active", "other", "--config", sandbox.configurationPath]).status == 0)
            #expect(try status(sandbox).primary == "B")
            for attempt in 1...3 { #expect(try boot(sandbox, fail: true) == "B", "boot \(attempt)") }
            #expect(try boot(sandbox, fail: false) == "A")
            let report = try status(sandbox)
            #expect(report.rollback?.from == "B")
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "bad")
            #expect(report.groups.first { $0.bootname == "A" }?.boot == "good")
            #expect(report.primary == "A")
            // The next boots stay on A.
            #expect(try boot(sandbox, fail: false) == "A")
        }
    }

    @Test func grubRollbackAfterOneFailedTry() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: "grub")
            #expect(try ferry(["mark", "active", "B", "--config", sandbox.configurationPath]).status == 0)
            #expect(try boot(sandbox, fail: true) == "B")
            #expect(try boot(sandbox, fail: false) == "A")
            let report = try status(sandbox)
            #expect(report.rollback?.from == "B")
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "bad")
            let text = try ferry(["status", "--config", sandbox.configurationPath]).output
            #expect(text.contains("Rolled back:   from B to A"))
        }
    }

    @Test(arguments: ["uboot", "grub"])
    func switchBootAndConfirm(bootloader: String) async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: bootloader)
            #expect(try ferry(["mark", "active", "rootfs_b", "--config", sandbox.configurationPath]).status == 0)
            #expect(try status(sandbox).groups.first { $0.bootname == "B" }?.boot == "trial")
            #expect(try boot(sandbox, fail: false) == "B")
            let report = try status(sandbox)
            #expect(report.booted == "B" && report.primary == "B")
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "good")
            #expect(report.rollback == nil)
            #expect(try boot(sandbox, fail: false) == "B")
        }
    }

    @Test func envCommandsOnTheConfiguredAndOnNamedEnvironments() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            #expect(try ferry(["env", "set"] + config + ["a=1", "b=two words"]).status == 0)
            #expect(try ferry(["env", "get"] + config + ["b"]).output == "two words\n")
            #expect(try ferry(["env", "list", "--uboot-config", "\(dir)/fw_env.config"]).output.contains("a=1\n"))
            #expect(try Shell.check(["fw_printenv", "-c", "\(dir)/fw_env.config", "b"]) == "b=two words\n")
            #expect(try ferry(["env", "unset"] + config + ["a"]).status == 0)
            #expect(try ferry(["env", "get"] + config + ["a"]).status == 1)
            let grub = try Sandbox.make(in: "\(dir)/g", bootloader: "grub")
            #expect(try ferry(["env", "set", "--grub", "\(grub.directory)/grubenv", "X=1"]).status == 0)
            #expect(try Shell.check(["grub-editenv", "\(grub.directory)/grubenv", "list"]).contains("X=1\n"))
        }
    }

    @Test func badInputsAreOneLineErrorsAndWriteNothing() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let config = ["--config", sandbox.configurationPath]
            let disk = try readFile(sandbox.diskPath)
            func expectFailure(_ arguments: [String], status: Int32) throws {
                let result = try ferry(arguments)
                #expect(result.status == status, "\(arguments): \(result.output)")
                #expect(result.output.hasPrefix("ferry: error: "), "\(arguments): \(result.output)")
                #expect(result.output.filter { $0 == "\n" }.count == 1, "\(arguments): \(result.output)")
                #expect(try readFile(sandbox.diskPath) == disk, "\(arguments) changed the disk")
            }
            // Unknown slot or group name.
            try expectFailure(["mark", "active", "C"] + config, status: 12)
            try expectFailure(["mark", "good", "rootfs_c"] + config, status: 12)
            // Environment too small for the variables.
            try expectFailure(["env", "set"] + config + ["big=" + String(repeating: "x", count: 20000)], status: 81)
            // Malformed fw_env.config.
            try DurableFile.write("\(sandbox.diskPath) nonsense 0x4000\n", to: "\(dir)/bad.config")
            try expectFailure(["env", "list", "--uboot-config", "\(dir)/bad.config"], status: 80)
            try DurableFile.write("\(sandbox.diskPath) 0x0\n", to: "\(dir)/short.config")
            try expectFailure(["env", "set", "--uboot-config", "\(dir)/short.config", "a=1"], status: 80)
            // Missing environment file.
            try DurableFile.write("\(dir)/missing.env 0x0 0x4000\n", to: "\(dir)/missing.config")
            try expectFailure(["env", "set", "--uboot-config", "\(dir)/missing.config", "a=1"], status: 80)
            // GRUB block of the wrong size, and with the wrong signature.
            try makeFile(
                "\(dir)/small.grubenv",
                bytes: Array("# GRUB Environment Block\n".utf8) + [UInt8](repeating: 35, count: 500))
            try expectFailure(["env", "set", "--grub", "\(dir)/small.grubenv", "a=1"], status: 80)
            try makeFile("\(dir)/unsigned.grubenv", bytes: [UInt8](repeating: 35, count: 1024))
            try expectFailure(["env", "set", "--grub", "\(dir)/unsigned.grubenv", "a=1"], status: 80)
            #expect(try readFile("\(dir)/unsigned.grubenv") == [UInt8](repeating: 35, count: 1024))
        }
    }

    /// Rewrites the sandbox's system.json by replacing one exact piece of text.
    func editConfiguration(_ sandbox: Sandbox, replacing old: String, with new: String) throws {
        let text = try TextFile.read(sandbox.configurationPath)
        #expect(text.contains(old), "system.json has no '\(old)'")
        try DurableFile.write(text.replacing(old, with: new), to: sandbox.configurationPath)
    }

    @Test func environmentLocationsGivenInTheConfiguration() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            let offset = try PartitionTable.read(sandbox.diskPath).partition(
                .partitionLabel("boot"), disk: sandbox.diskPath
            ).startOffset
            try editConfiguration(
                sandbox, replacing: "\"fwEnvConfig\": \"fw_env.config\"",
                with:
                    "\"environment\": [{\"device\": \"disk.img\", \"offset\": \(offset), \"size\": 16384}, {\"device\": \"disk.img\", \"offset\": \(offset + 16384), \"size\": 16384}]"
            )
            #expect(try ferry(["mark", "active", "B", "--config", sandbox.configurationPath]).status == 0)
            // fw_printenv, reading through the sandbox's fw_env.config, sees the same environment.
            #expect(try Shell.check(["fw_printenv", "-c", "\(dir)/fw_env.config", "BOOT_ORDER"]) == "BOOT_ORDER=B A\n")
        }
    }

    @Test func customBootChooser() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            // A chooser that keeps its state in files, as an integrator's script might.
            let script = """
                #!/bin/sh
                d="\(dir)/chooser"; mkdir -p "$d"
                case "$1" in
                  get-primary) cat "$d/primary" 2>/dev/null || echo A ;;
                  set-primary) echo "$2" > "$d/primary"; echo good > "$d/$2" ;;
                  get-state) cat "$d/$2" 2>/dev/null || echo good ;;
                  set-state) echo "$3" > "$d/$2" ;;
                  *) exit 2 ;;
                esac
                """
            try DurableFile.write(script, to: "\(dir)/chooser.sh")
            try Shell.check(["chmod", "+x", "\(dir)/chooser.sh"])
            try editConfiguration(
                sandbox, replacing: "\"type\": \"uboot\", \"fwEnvConfig\": \"fw_env.config\", \"tries\": 3",
                with: "\"type\": \"custom\", \"command\": \"chooser.sh\"")
            let config = ["--config", sandbox.configurationPath]
            #expect(try ferry(["mark", "active", "other"] + config).status == 0)
            #expect(try TextFile.read("\(dir)/chooser/primary") == "B\n")
            #expect(try ferry(["mark", "bad", "B"] + config).status == 0)
            let report = try status(sandbox)
            #expect(report.primary == "B")
            #expect(report.groups.first { $0.bootname == "B" }?.boot == "bad")
            // A chooser that fails is a clear error.
            try DurableFile.write("#!/bin/sh\nexit 3\n", to: "\(dir)/chooser.sh")
            let notExecutable = try ferry(["mark", "good"] + config)
            #expect(notExecutable.status == 80 && notExecutable.output.contains("custom boot chooser"))
            try Shell.check(["chmod", "+x", "\(dir)/chooser.sh"])
            let failed = try ferry(["mark", "good"] + config)
            #expect(failed.status == 80)
            #expect(failed.output.contains("failed with status 3"))
            // The custom backend has no environment for `ferry env`.
            #expect(try ferry(["env", "list"] + config).status == 82)
        }
    }

    @Test func healthCheckFailureAndTimeoutLeaveTheGroupUnconfirmed() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir)
            try DurableFile.write("#!/bin/sh\n[ \"$FERRY_BOOTED\" = A ] && exit 0\nexit 1\n", to: "\(dir)/health.sh")
            try DurableFile.write("#!/bin/sh\nsleep 30\n", to: "\(dir)/hang.sh")
            try Shell.check(["chmod", "+x", "\(dir)/health.sh", "\(dir)/hang.sh"])
            try editConfiguration(
                sandbox, replacing: "\"signatureThreshold\": 1",
                with: "\"signatureThreshold\": 1, \"hooks\": {\"healthCheck\": \"health.sh\", \"timeoutSeconds\": 2}")
            let config = ["--config", sandbox.configurationPath]
            // Healthy on A: confirmed.
            #expect(try ferry(["boot-check"] + config).status == 0)
            // Switch to B, boot it: unhealthy there, exit 83, B stays on trial.
            #expect(try ferry(["mark", "active", "B"] + config).status == 0)
            let result = try Shell.run(
                ["\(TestEnvironment.packageRoot)/tools/sandbox-boot", sandbox.directory],
                environment: ["FERRY": TestEnvironment.ferryBinary])
            #expect(result.status == 83, "\(result.output)")
            #expect(result.output.contains("ferry: error: health check"))
            #expect(try status(sandbox).groups.first { $0.bootname == "B" }?.boot == "trial")
            // A health check that hangs is killed at the timeout.
            try editConfiguration(sandbox, replacing: "health.sh", with: "hang.sh")
            let hung = try ferry(["boot-check"] + config)
            #expect(hung.status == 83)
            #expect(hung.output.contains("timed out"))
        }
    }
}
