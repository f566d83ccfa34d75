import FerryBootloader
import FerryCore
import FerryNet
import FerrySystem
import FerryTestSupport
import Testing

/// Strict parsing of `system.json`: what a valid file yields, and that every mistake is an error.
@Suite struct SystemConfigurationTests {
    static let fullConfiguration = """
        {
          "formatVersion": 1,
          "compatible": "acme-board-v2",
          "sandbox": false,
          "stateDirectory": "../../var/lib/ferry",
          "bootloader": { "type": "grub", "grubenv": "/boot/grub/grubenv", "tries": 5 },
          "keyring": "keys/keyring.pem",
          "signatureThreshold": 2,
          "tlsPins": [
            "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=",
            "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef"
          ],
          "updateURL": "https://updates.example.com/acme",
          "appStore": "apps",
          "settingsStore": "/data/settings",
          "hooks": { "preInstall": "hooks/pre-install", "healthCheck": "/usr/bin/health", "timeoutSeconds": 60 },
          "slots": {
            "rootfs_b": { "class": "rootfs", "bootname": "B", "disk": "../disk.img", "partition": "3" },
            "rootfs_a": { "class": "rootfs", "bootname": "A", "disk": "../disk.img", "partition": "PARTLABEL=rootfs_a",
                          "size": 16777216 },
            "modem_b": { "class": "modem", "bootname": "B", "device": "PARTUUID=fe77e000-0000-4000-8000-000000000005" },
            "modem_a": { "class": "modem", "bootname": "A", "device": "/dev/mmcblk0p4" },
            "app_a": { "class": "app", "bootname": "A", "device": "images/app_a.img" },
            "app_b": { "class": "app", "bootname": "B", "device": "LABEL=app_b" }
          }
        }
        """

    @Test func aValidConfigurationParses() async throws {
        try await withTemporaryDirectory { dir in
            try DurableFile.createDirectory("\(dir)/etc/ferry")
            let configuration = try writeConfiguration(Self.fullConfiguration, in: "\(dir)/etc/ferry")
            #expect(configuration.path == "\(dir)/etc/ferry/system.json")
            #expect(configuration.directory == "\(dir)/etc/ferry")
            #expect(configuration.compatible == "acme-board-v2")
            #expect(!configuration.sandbox)
            // Relative paths resolve against the file's folder; absolute ones stay.
            #expect(configuration.stateDirectory == "\(dir)/var/lib/ferry")
            #expect(configuration.keyring == "\(dir)/etc/ferry/keys/keyring.pem")
            #expect(configuration.appStore == "\(dir)/etc/ferry/apps")
            #expect(configuration.settingsStore == "/data/settings")
            #expect(configuration.bootloader.kind == .grub)
            #expect(configuration.bootloader.fwEnvConfig == nil)
            #expect(configuration.bootloader.grubenv == "/boot/grub/grubenv")
            #expect(configuration.bootloader.tries == 5)
            #expect(configuration.bootloader.command == nil)
            #expect(configuration.signatureThreshold == 2)
            #expect(configuration.transport.pins.anyHost.map(\.kind) == [.publicKey, .certificate])
            #expect(configuration.transport.pins.pins(for: "Updates.Example.com").count == 2)
            #expect(configuration.transport.caFile == nil)
            #expect(configuration.transport.retries == 5)
            #expect(configuration.updateURL == "https://updates.example.com/acme")
            #expect(configuration.hooks.preInstall == "\(dir)/etc/ferry/hooks/pre-install")
            #expect(configuration.hooks.postInstall == nil)
            #expect(configuration.hooks.healthCheck == "/usr/bin/health")
            #expect(configuration.hooks.timeoutSeconds == 60)
        }
    }

    @Test func slotsAreSortedAndGrouped() async throws {
        try await withTemporaryDirectory { dir in
            try DurableFile.createDirectory("\(dir)/etc/ferry")
            let configuration = try writeConfiguration(Self.fullConfiguration, in: "\(dir)/etc/ferry")
            // Sorted by bootname, then class.
            #expect(
                configuration.slots.map(\.name) == ["app_a", "modem_a", "rootfs_a", "app_b", "modem_b", "rootfs_b"])
            #expect(configuration.groups.map(\.bootname) == ["A", "B"])
            #expect(
                configuration.groups.map { $0.slots.map(\.name) } == [
                    ["app_a", "modem_a", "rootfs_a"], ["app_b", "modem_b", "rootfs_b"],
                ])
            #expect(configuration.group("B")?.slot(ofClass: "modem")?.name == "modem_b")
            #expect(configuration.group("C") == nil)
            #expect(configuration.group("A")?.slot(ofClass: "kernel") == nil)

            let rootfsA = try #require(configuration.slot(named: "rootfs_a"))
            #expect(rootfsA.name == "rootfs_a")
            #expect(rootfsA.slotClass == "rootfs")
            #expect(rootfsA.bootname == "A")
            #expect(
                rootfsA.device == .diskPartition(disk: "\(dir)/etc/disk.img", partition: .partitionLabel("rootfs_a")))
            #expect(rootfsA.declaredSize == 16_777_216)
            #expect(
                configuration.slot(named: "rootfs_b")?.device
                    == .diskPartition(disk: "\(dir)/etc/disk.img", partition: .number(3)))
            #expect(configuration.slot(named: "rootfs_b")?.declaredSize == nil)
            #expect(configuration.slot(named: "modem_a")?.device == .path("/dev/mmcblk0p4"))
            #expect(
                configuration.slot(named: "modem_b")?.device
                    == .tag(.partitionUUID("fe77e000-0000-4000-8000-000000000005")))
            #expect(configuration.slot(named: "app_a")?.device == .path("\(dir)/etc/ferry/images/app_a.img"))
            #expect(configuration.slot(named: "app_b")?.device == .tag(.label("app_b")))
            #expect(configuration.slot(named: "nope") == nil)
        }
    }

    @Test func defaultsApplyToAMinimalConfiguration() throws {
        let text = """
            {
              "compatible": "tiny",
              "bootloader": { "type": "uboot", "fwEnvConfig": "/etc/fw_env.config" },
              "slots": {
                "a": { "class": "rootfs", "bootname": "A", "device": "/dev/sda2" },
                "b": { "class": "rootfs", "bootname": "B", "device": "/dev/sda3" }
              }
            }
            """
        let configuration = try SystemConfiguration.parse(Array(text.utf8), path: "/etc/ferry/system.json")
        #expect(configuration.directory == "/etc/ferry")
        #expect(!configuration.sandbox)
        #expect(configuration.stateDirectory == "/var/lib/ferry")
        #expect(configuration.bootloader.kind == .uboot)
        #expect(configuration.bootloader.fwEnvConfig == "/etc/fw_env.config")
        #expect(configuration.bootloader.tries == 3)
        #expect(configuration.keyring == nil)
        #expect(configuration.signatureThreshold == 1)
        #expect(configuration.transport.pins.isEmpty)
        #expect(configuration.updateURL == nil)
        #expect(configuration.appStore == nil)
        #expect(configuration.settingsStore == nil)
        #expect(configuration.hooks.preInstall == nil)
        #expect(configuration.hooks.postInstall == nil)
        #expect(configuration.hooks.healthCheck == nil)
        #expect(configuration.hooks.timeoutSeconds == 300)
        #expect(configuration.bootloader.byteOrder == .little)
        #expect(configuration.bootloader.flagScheme == .incremental)
        #expect(!configuration.bootloader.allowSingleRawCopy)
        #expect(configuration.bootloader.confirmInBootCheck)
        #expect(configuration.groups.count == 2)
        #expect(configuration.slots.allSatisfy { $0.declaredSize == nil })
    }

    @Test func pinsPerHostAndNetworkOptionsParse() throws {
        let text = """
            {
              "compatible": "tiny",
              "bootloader": { "type": "uboot", "fwEnvConfig": "/etc/fw_env.config" },
              "tlsPins": {
                "Updates.Example.com": [ "01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef" ],
                "*": [ "sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=" ]
              },
              "network": {
                "caFile": "ca.pem", "clientCertificate": "/etc/device.pem", "clientKey": "device.key",
                "connectTimeoutSeconds": 5, "stallTimeoutSeconds": 7, "retries": 0, "retryDelaySeconds": 0.25, "maximumRedirects": 2
              },
              "slots": {
                "a": { "class": "rootfs", "bootname": "A", "device": "/dev/sda2" },
                "b": { "class": "rootfs", "bootname": "B", "device": "/dev/sda3" }
              }
            }
            """
        let configuration = try SystemConfiguration.parse(Array(text.utf8), path: "/etc/ferry/system.json")
        let transport = configuration.transport
        #expect(
            transport.pins.pins(for: "updates.example.com").map(\.description)
                == ["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"])
        #expect(
            transport.pins.pins(for: "mirror.example.com").map(\.description)
                == ["sha256//r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E="])
        #expect(transport.caFile == "/etc/ferry/ca.pem")
        #expect(transport.clientCertificate == "/etc/device.pem")
        #expect(transport.clientKey == "/etc/ferry/device.key")
        #expect(transport.connectTimeoutSeconds == 5)
        #expect(transport.stallTimeoutSeconds == 7)
        #expect(transport.retries == 0)
        #expect(transport.retryDelaySeconds == 0.25)
        #expect(transport.maximumRedirects == 2)
    }

    @Test func nullCountsAsAbsent() throws {
        let text = """
            {
              "compatible": "tiny", "keyring": null, "updateURL": null,
              "bootloader": { "type": "custom", "command": "/usr/bin/bootctl", "tries": null },
              "slots": {
                "a": { "class": "rootfs", "bootname": "A", "device": "/dev/sda2", "size": null },
                "b": { "class": "rootfs", "bootname": "B", "device": "/dev/sda3" }
              }
            }
            """
        let configuration = try SystemConfiguration.parse(Array(text.utf8), path: "/etc/ferry/system.json")
        #expect(configuration.keyring == nil)
        #expect(configuration.bootloader.kind == .custom)
        #expect(configuration.bootloader.command == "/usr/bin/bootctl")
        #expect(configuration.bootloader.tries == 3)
    }

    @Test func aSandboxOfImageFilesIsValid() async throws {
        try await withTemporaryDirectory { dir in
            let configuration = try ImageFileDevice.make(in: dir, sandbox: true)
            #expect(configuration.sandbox)
            #expect(configuration.stateDirectory == "\(dir)/state")
            let imageFileSlots = configuration.slots.filter(\.isImageFileSlot)
            #expect(imageFileSlots.count == 4)
        }
    }

    @Test func theSandboxDeviceOfMakeTestDiskParses() async throws {
        try await withTemporaryDirectory { dir in
            let sandbox = try Sandbox.make(in: dir, bootloader: "grub")
            let configuration = try sandbox.configuration()
            #expect(configuration.sandbox)
            #expect(configuration.compatible == "ferry-demo-x86_64")
            #expect(configuration.bootloader.kind == .grub)
            #expect(configuration.bootloader.grubenv == "\(configuration.directory)/grubenv")
            #expect(configuration.keyring == "\(configuration.directory)/pki/keyring.pem")
            #expect(
                configuration.slots.map(\.name) == ["modem_a", "rootfs_a", "tee_a", "modem_b", "rootfs_b", "tee_b"])
        }
    }

    // MARK: - Errors

    static let bootloader = #""bootloader": { "type": "uboot", "fwEnvConfig": "fw_env.config" }"#
    static let compatible = #""compatible": "board""#
    static let pair = slots(
        #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
        #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#)

    static func slots(_ entries: String...) -> String { #""slots": { \#(entries.joined(separator: ", ")) }"# }
    static func document(_ members: String...) -> String { "{ " + members.joined(separator: ", ") + " }" }
    static func valid(_ extra: String...) -> String {
        document(([compatible, bootloader, pair] + extra).joined(separator: ", "))
    }

    /// A valid base with a single-copy `boot` slot whose entry ends with `update`.
    static func withBootloader(_ entry: String) -> String {
        document(
            compatible, bootloader,
            slots(
                #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                #""boot": { "class": "bootloader", "device": "disk.img", "# + entry + " }"))
    }
    static let twoRegions = #""regions": [{ "offset": 32768, "size": 491520 }, { "offset": 524288, "size": 491520 }]"#

    static let invalidDocuments: [(String, String)] = [
        ("invalid JSON", #"{ "compatible": "board", "#),
        (
            "an update strategy on an A/B-less slot that is not single-copy",
            withBootloader(#""bootname": "A", "update": { "strategy": "raw-fallback", \#(twoRegions) }"#)
        ),
        (
            "an update strategy with writeInPlace",
            withBootloader(
                #""singleCopy": true, "writeInPlace": true, "update": { "strategy": "raw-fallback", \#(twoRegions) }"#)
        ),
        (
            "an unknown strategy",
            withBootloader(#""singleCopy": true, "update": { "strategy": "emmc-magic", \#(twoRegions) }"#)
        ),
        (
            "one region",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "regions": [{ "offset": 32768, "size": 491520 }] }"#
            )
        ),
        (
            "overlapping regions",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "regions": [{ "offset": 32768, "size": 491520 }, { "offset": 65536, "size": 491520 }] }"#
            )
        ),
        (
            "a region over the MBR",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "regions": [{ "offset": 0, "size": 4096 }, { "offset": 65536, "size": 4096 }] }"#
            )
        ),
        (
            "a region not in whole sectors",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "regions": [{ "offset": 32769, "size": 4096 }, { "offset": 65536, "size": 4096 }] }"#
            )
        ),
        (
            "mbr-switch without a pointer",
            withBootloader(#""singleCopy": true, "update": { "strategy": "mbr-switch", \#(twoRegions) }"#)
        ),
        (
            "mbr-switch with partition 5",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "mbr-switch", "partition": 5, \#(twoRegions) }"#)
        ),
        (
            "gpt-switch without a partition",
            withBootloader(#""singleCopy": true, "update": { "strategy": "gpt-switch", \#(twoRegions) }"#)
        ),
        (
            "gpt-switch with regions of two sizes",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "gpt-switch", "partition": 1, "regions": [{ "offset": 32768, "size": 4096 }, { "offset": 524288, "size": 8192 }] }"#
            )
        ),
        (
            "raw-fallback with a header as large as a copy",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "headerSize": 491520, \#(twoRegions) }"#)
        ),
        (
            "an unknown key in update",
            withBootloader(
                #""singleCopy": true, "update": { "strategy": "raw-fallback", "colour": 1, \#(twoRegions) }"#)
        ),
        ("empty file", ""),
        ("trailing garbage", valid() + " }"),
        ("not an object", #"[ "compatible", "board" ]"#),
        ("a string", #""board""#),
        ("unknown top-level key", valid(#""colour": "blue""#)),
        ("misspelled top-level key", document(#""compatable": "board""#, bootloader, pair)),
        (
            "a single-copy slot with a bootname",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                    #""boot": { "class": "bootloader", "bootname": "A", "singleCopy": true, "device": "c.img" }"#))
        ),
        (
            "a single-copy rootfs",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                    #""root": { "class": "rootfs", "singleCopy": true, "device": "c.img" }"#))
        ),
        (
            "a class both single-copy and A/B",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                    #""modem_a": { "class": "modem", "bootname": "A", "device": "m.img" }"#,
                    #""modem_b": { "class": "modem", "bootname": "B", "device": "n.img" }"#,
                    #""modem": { "class": "modem", "singleCopy": true, "device": "c.img" }"#))
        ),
        (
            "writeInPlace on an A/B slot",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "writeInPlace": true }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "unknown key inside a slot",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "sise": 5 }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "unknown key in bootloader",
            document(compatible, #""bootloader": { "type": "uboot", "fwEnvConfig": "x", "retries": 2 }"#, pair)
        ),
        ("unknown key in hooks", valid(#""hooks": { "preinstall": "x" }"#)),
        ("missing compatible", document(bootloader, pair)),
        ("empty compatible", document(#""compatible": """#, bootloader, pair)),
        ("compatible not a string", document(#""compatible": 7"#, bootloader, pair)),
        ("missing slots", document(compatible, bootloader)),
        ("empty slots", document(compatible, bootloader, #""slots": {}"#)),
        ("slots not an object", document(compatible, bootloader, #""slots": []"#)),
        ("slot not an object", document(compatible, bootloader, slots(#""rootfs_a": "a.img""#))),
        ("missing bootloader", document(compatible, pair)),
        ("bootloader not an object", document(compatible, #""bootloader": "uboot""#, pair)),
        ("bad bootloader type", document(compatible, #""bootloader": { "type": "lilo" }"#, pair)),
        ("missing bootloader type", document(compatible, #""bootloader": { "fwEnvConfig": "x" }"#, pair)),
        ("uboot without fwEnvConfig", document(compatible, #""bootloader": { "type": "uboot" }"#, pair)),
        ("grub without grubenv", document(compatible, #""bootloader": { "type": "grub" }"#, pair)),
        ("custom without command", document(compatible, #""bootloader": { "type": "custom" }"#, pair)),
        ("tries 0", document(compatible, #""bootloader": { "type": "grub", "grubenv": "g", "tries": 0 }"#, pair)),
        ("tries 16", document(compatible, #""bootloader": { "type": "grub", "grubenv": "g", "tries": 16 }"#, pair)),
        (
            "tries a fraction",
            document(compatible, #""bootloader": { "type": "grub", "grubenv": "g", "tries": 2.5 }"#, pair)
        ),
        (
            "bad byteOrder",
            document(compatible, #""bootloader": { "type": "uboot", "fwEnvConfig": "x", "byteOrder": "middle" }"#, pair)
        ),
        (
            "bad flagScheme",
            document(
                compatible, #""bootloader": { "type": "uboot", "fwEnvConfig": "x", "flagScheme": "toggle" }"#, pair)
        ),
        (
            "allowSingleRawCopy not a boolean",
            document(
                compatible, #""bootloader": { "type": "uboot", "fwEnvConfig": "x", "allowSingleRawCopy": 1 }"#, pair)
        ),
        ("formatVersion 2", valid(#""formatVersion": 2"#)),
        ("formatVersion 0", valid(#""formatVersion": 0"#)),
        ("formatVersion a string", valid(#""formatVersion": "1""#)),
        ("sandbox not a boolean", valid(#""sandbox": "yes""#)),
        ("signatureThreshold 0", valid(#""signatureThreshold": 0"#)),
        ("hooks timeout 0", valid(#""hooks": { "timeoutSeconds": 0 }"#)),
        (
            "slot with both device and disk",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "disk": "d.img", "partition": "1" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "slot with device and partition",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "partition": "1" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "slot without a device",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "disk without partition",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "disk": "d.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "partition without disk",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "partition": "PARTLABEL=rootfs_a" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "bad partition tag",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "disk": "d.img", "partition": "rootfs_a" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "disk": "d.img", "partition": "PARTNAME=rootfs_b" }"#
                ))
        ),
        (
            "partition number 0",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "disk": "d.img", "partition": "0" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "disk": "d.img", "partition": "2" }"#))
        ),
        (
            "partition number as device",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "2" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "duplicated device",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "same.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "same.img" }"#))
        ),
        (
            "duplicated device, spelled differently",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "images/../same.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "./same.img" }"#))
        ),
        (
            "duplicated partition",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "disk": "d.img", "partition": "PARTLABEL=x" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "disk": "./d.img", "partition": "PARTLABEL=x" }"#
                ))
        ),
        (
            "duplicated tag",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "PARTLABEL=root" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "PARTLABEL=root" }"#))
        ),
        (
            "only one group",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""modem_a": { "class": "modem", "bootname": "A", "device": "m.img" }"#))
        ),
        (
            "a single slot",
            document(
                compatible, bootloader, slots(#""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#)
            )
        ),
        (
            "unpaired slot",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                    #""modem_a": { "class": "modem", "bootname": "A", "device": "m.img" }"#))
        ),
        (
            "two rootfs slots in one group",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_a2": { "class": "rootfs", "bootname": "A", "device": "a2.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "bad slot name",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "slot name with a slash",
            document(
                compatible, bootloader,
                slots(
                    #""root/fs": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "slot name ..",
            document(
                compatible, bootloader,
                slots(
                    #""..": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "bad class name",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "root fs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "root fs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "bad bootname",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A/", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "missing class",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "size 0",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "size": 0 }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "size a string",
            document(
                compatible, bootloader,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img", "size": "16M" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        ("updateURL http://", valid(#""updateURL": "http://updates.example.com""#)),
        ("updateURL without a scheme", valid(#""updateURL": "updates.example.com""#)),
        ("bad tlsPins entry", valid(#""tlsPins": [ "md5//abcdef" ]"#)),
        (
            "tlsPins with 63 hex digits",
            valid(#""tlsPins": [ "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde" ]"#)
        ),
        ("tlsPins empty sha256//", valid(#""tlsPins": [ "sha256//" ]"#)),
        ("tlsPins not an array", valid(#""tlsPins": "sha256//abc""#)),
        ("tlsPins with a number", valid(#""tlsPins": [ 5 ]"#)),
        ("tlsPins host with a bad pin", valid(#""tlsPins": { "a.example": [ "sha256//AAAA" ] }"#)),
        ("tlsPins host not an array", valid(#""tlsPins": { "a.example": "sha256//abc" }"#)),
        ("network unknown key", valid(#""network": { "proxy": "x" }"#)),
        ("network negative retries", valid(#""network": { "retries": -1 }"#)),
        ("network key without certificate", valid(#""network": { "clientKey": "k.pem" }"#)),
        ("network retry delay a string", valid(#""network": { "retryDelaySeconds": "1" }"#)),
        (
            "sandbox true with a /dev/ path slot",
            document(
                compatible, bootloader, #""sandbox": true"#,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "/dev/ferry-test-missing-a" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#))
        ),
        (
            "sandbox true with an existing device node",
            document(
                compatible, bootloader, #""sandbox": true"#,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "/dev/null" }"#))
        ),
        (
            "sandbox true with a tag",
            document(
                compatible, bootloader, #""sandbox": true"#,
                slots(
                    #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                    #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "PARTLABEL=rootfs_b" }"#))
        ),
    ]

    @Test(arguments: SystemConfigurationTests.invalidDocuments)
    func everyConfigurationErrorIsConfigurationInvalid(problem: String, text: String) async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/system.json"
            try makeFile(path, bytes: Array(text.utf8))
            expectFerryError(.configurationInvalid) { try SystemConfiguration.load(path) }
            expectFerryError(.configurationInvalid) { try SystemConfiguration.parse(Array(text.utf8), path: path) }
        }
    }

    @Test func theValidBaseOfTheErrorTableParses() throws {
        // Makes sure each error case above fails for its own reason, not because of the base.
        let configuration = try SystemConfiguration.parse(Array(Self.valid().utf8), path: "/tmp/ferry/system.json")
        #expect(configuration.slots.count == 2)
        let sandboxed = Self.document(Self.compatible, Self.bootloader, #""sandbox": true"#, Self.pair)
        #expect(try SystemConfiguration.parse(Array(sandboxed.utf8), path: "/tmp/ferry/system.json").sandbox)
    }

    @Test func aSingleCopySlotBelongsToNoGroup() throws {
        let text = Self.document(
            Self.compatible, Self.bootloader,
            Self.slots(
                #""rootfs_a": { "class": "rootfs", "bootname": "A", "device": "a.img" }"#,
                #""rootfs_b": { "class": "rootfs", "bootname": "B", "device": "b.img" }"#,
                #""boot": { "class": "bootloader", "singleCopy": true, "writeInPlace": true, "device": "c.img" }"#))
        let configuration = try SystemConfiguration.parse(Array(text.utf8), path: "/tmp/ferry/system.json")
        #expect(configuration.groups.map { $0.slots.map(\.name) } == [["rootfs_a"], ["rootfs_b"]])
        let single = try #require(configuration.singleCopySlot(ofClass: "bootloader"))
        #expect(single.name == "boot" && single.bootname.isEmpty && single.writeInPlace)
    }

    @Test func updateStrategiesParse() throws {
        let cases: [(String, BootloaderStrategy)] = [
            (
                #""strategy": "mbr-switch", "pointer": "grub-core", \#(Self.twoRegions)"#,
                .mbrSwitch(
                    regions: [BootRegion(offset: 32768, size: 491520), BootRegion(offset: 524288, size: 491520)],
                    pointer: .grubCore)
            ),
            (
                #""strategy": "mbr-switch", "partition": 2, \#(Self.twoRegions)"#,
                .mbrSwitch(
                    regions: [BootRegion(offset: 32768, size: 491520), BootRegion(offset: 524288, size: 491520)],
                    pointer: .partition(2))
            ),
            (
                #""strategy": "gpt-switch", "partition": 1, \#(Self.twoRegions)"#,
                .gptSwitch(
                    regions: [BootRegion(offset: 32768, size: 491520), BootRegion(offset: 524288, size: 491520)],
                    partition: 1)
            ),
            (
                #""strategy": "raw-fallback", "headerSize": 1024, \#(Self.twoRegions)"#,
                .rawFallback(
                    copies: [BootRegion(offset: 32768, size: 491520), BootRegion(offset: 524288, size: 491520)],
                    headerSize: 1024)
            ),
        ]
        for (update, expected) in cases {
            let text = Self.withBootloader(#""singleCopy": true, "update": { \#(update) }"#)
            let configuration = try SystemConfiguration.parse(Array(text.utf8), path: "/tmp/ferry/system.json")
            #expect(configuration.singleCopySlot(ofClass: "bootloader")?.update == expected)
        }
    }

    @Test func aMissingFileIsConfigurationNotFound() async throws {
        try await withTemporaryDirectory { dir in
            expectFerryError(.configurationNotFound) { try SystemConfiguration.load("\(dir)/system.json") }
            expectFerryError(.configurationNotFound) { try SystemConfiguration.load("\(dir)/missing/system.json") }
            // A directory cannot be read as a file either.
            expectFerryError(.configurationNotFound) { try SystemConfiguration.load(dir) }
        }
    }

    @Test(
        arguments: [
            ("/cli/system.json", "/env/system.json", "/cli/system.json"),
            (nil, "/env/system.json", "/env/system.json"),
            ("", "/env/system.json", "/env/system.json"),
            (nil, nil, "/etc/ferry/system.json"),
            (nil, "", "/etc/ferry/system.json"),
        ] as [(String?, String?, String)])
    func locatePrefersTheOptionThenTheEnvironment(explicit: String?, environment: String?, expected: String) {
        let variables = environment.map { ["FERRY_CONFIG": $0] } ?? [:]
        #expect(SystemConfiguration.locate(explicit: explicit, environment: variables) == expected)
    }

    @Test(arguments: [
        ("disk.img", "/etc/ferry", "/etc/ferry/disk.img"),
        ("../disk.img", "/etc/ferry", "/etc/disk.img"),
        ("./a/./b.img", "/etc/ferry", "/etc/ferry/a/b.img"),
        ("/abs//x.img", "/etc/ferry", "/abs/x.img"),
    ])
    func pathsResolveAgainstTheConfigurationFolder(path: String, directory: String, expected: String) {
        #expect(Paths.resolve(path, against: directory) == expected)
    }
}
