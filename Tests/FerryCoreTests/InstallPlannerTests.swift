import FerryBundle
import FerryCore
import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// The install planner, table by table, without root or devices: which step each payload
/// becomes, which members are copied, whether a group switches, and every refusal it can know.
@Suite struct InstallPlannerTests {
    /// A device with rootfs, modem and tee in groups A and B, a single-copy `bootloader` slot, and
    /// the booted group's records. Slot capacities: 8 MiB, except tee (1 MiB).
    static func planner(_ dir: String, records: [String: InstalledSlotRecord]? = nil) throws -> InstallPlanner {
        var slots: [SlotSpec] = []
        for (slotClass, group) in [
            ("rootfs", "A"), ("rootfs", "B"), ("modem", "A"), ("modem", "B"), ("tee", "A"), ("tee", "B"),
        ] {
            let name = "\(slotClass)_\(group.lowercased())"
            try makeFile("\(dir)/\(name).img", size: 4096)
            slots.append(.device(name, slotClass, group, "\(name).img"))
        }
        try makeFile("\(dir)/bootloader.img", size: 4096)
        try makeFile("\(dir)/boot-disk.img", size: 4 << 20)
        var text = configurationText(slots: slots)
        text = text.replacing(
            "\n  }\n}",
            with:
                ",\n    \"bootloader\": { \"class\": \"bootloader\", \"device\": \"bootloader.img\", \"singleCopy\": true, \"writeInPlace\": true },"
                + "\n    \"spl\": { \"class\": \"spl\", \"device\": \"boot-disk.img\", \"singleCopy\": true, \"update\": { \"strategy\": \"raw-fallback\", \"regions\": [{ \"offset\": 1048576, \"size\": 1048576 }, { \"offset\": 2097152, \"size\": 1048576 }] } }\n  }\n}"
        )
        try makeFile("\(dir)/fw_env.config", bytes: Array("\(dir)/env 0 0x4000\n".utf8))
        let configuration = try writeConfiguration(text, in: dir)
        let recorded =
            records ?? [
                "rootfs_a": InstalledSlotRecord(sha256: digest("rootfs").hex, size: 4 << 20),
                "modem_a": InstalledSlotRecord(sha256: digest("modem").hex, size: 1 << 20),
                "tee_a": InstalledSlotRecord(sha256: digest("tee").hex, size: 512 << 10),
            ]
        return InstallPlanner(
            configuration: configuration, booted: "A", target: "B", records: recorded,
            capacity: { (slot) throws(FerryError) in slot.slotClass == "tee" ? 1 << 20 : 8 << 20 })
    }

    static func digest(_ text: String) -> SHA256Digest { SHA256Hasher.hash(Array(text.utf8)) }

    static func payload(_ kind: Manifest.Payload.Kind, _ target: String, size: Int64 = 1 << 20) -> Manifest.Payload {
        Manifest.Payload(
            kind: kind, target: target, member: "\(target).\(kind.name)", compression: .xz, size: size,
            sha256: digest(target), storedSize: 0,
            chunkSize: 1 << 20, chunks: [])
    }

    static func manifest(_ payloads: [Manifest.Payload]) -> Manifest {
        Manifest(
            compatible: "test-board", version: SemanticVersion("1.1.0")!, securityVersion: 0, buildTime: 0,
            expires: nil, description: nil,
            keyring: nil, payloads: payloads)
    }

    static func spl(_ strategy: String = "raw-fallback", groups: [String] = ["A", "B"], size: Int64 = 256 << 10)
        -> Manifest.Payload
    {
        payload(.bootloader(Manifest.BootloaderInfo(strategy: strategy, bootsGroups: groups)), "spl", size: size)
    }

    static let delta = Manifest.DeltaInfo(
        sourceSize: 4 << 20, sourceSHA256: digest("rootfs"), targetSize: 5 << 20, targetSHA256: digest("new"),
        sourceChecks: [])

    /// What a plan does, in words: one entry per step, then the copies, then the switch.
    static func describe(_ plan: InstallPlan) -> [String] {
        plan.steps.map { step in
            switch step {
            case .writeImage(_, let slot): "image \(slot.name)"
            case .applyDelta(_, _, let slot, let source): "delta \(source.name)->\(slot.name)"
            case .writeSingleCopy(_, let slot): "in place \(slot.name)"
            case .updateBootloader(_, let info, let slot): "\(info.strategy) \(slot.name)"
            case .stageApp(_, let info): "app \(info.name)"
            case .stageSettings(_, let info): "settings \(info.name)"
            }
        } + plan.copies.map { "copy \($0.source.name)->\($0.slot.name)" } + ["switch \(plan.switchedGroup ?? "none")"]
    }

    @Test(arguments: [
        (
            "a full bundle", [payload(.image, "rootfs"), payload(.image, "modem"), payload(.image, "tee")],
            ["image rootfs_b", "image modem_b", "image tee_b", "switch B"]
        ),
        (
            "a rootfs delta with modules",
            [payload(.delta(delta), "rootfs"), payload(.image, "modem"), payload(.image, "tee")],
            ["delta rootfs_a->rootfs_b", "image modem_b", "image tee_b", "switch B"]
        ),
        (
            "a modem-only bundle", [payload(.image, "modem")],
            ["image modem_b", "copy rootfs_a->rootfs_b", "copy tee_a->tee_b", "switch B"]
        ),
        (
            "a mixed bundle",
            [
                payload(.image, "rootfs"),
                payload(.app(Manifest.AppInfo(name: "nav", version: "2", file: "nav.pkg")), "nav"),
                payload(.settings(Manifest.SettingsInfo(name: "c.json", format: "json", mergePatch: false)), "c.json"),
            ],
            ["image rootfs_b", "app nav", "settings c.json", "copy modem_a->modem_b", "copy tee_a->tee_b", "switch B"]
        ),
        (
            "apps and settings only",
            [payload(.app(Manifest.AppInfo(name: "nav", version: "2", file: "nav.pkg")), "nav")],
            ["app nav", "switch none"]
        ),
        ("a single-copy bootloader only", [payload(.image, "bootloader")], ["in place bootloader", "switch none"]),
        (
            "a single-copy bootloader and a rootfs", [payload(.image, "bootloader"), payload(.image, "rootfs")],
            ["in place bootloader", "image rootfs_b", "copy modem_a->modem_b", "copy tee_a->tee_b", "switch B"]
        ),
        ("a bootloader with its strategy", [spl()], ["raw-fallback spl", "switch none"]),
        (
            "a bootloader and a rootfs", [spl(), payload(.image, "rootfs")],
            ["raw-fallback spl", "image rootfs_b", "copy modem_a->modem_b", "copy tee_a->tee_b", "switch B"]
        ),
    ])
    func plans(_ what: String, _ payloads: [Manifest.Payload], _ expected: [String]) async throws {
        try await withTemporaryDirectory { dir in
            let plan = try Self.planner(dir).plan(Self.manifest(payloads))
            #expect(Self.describe(plan) == expected, "\(what)")
            #expect(
                plan.writesStoresOnly == !expected.contains {
                    $0.hasPrefix("image") || $0.hasPrefix("delta") || $0.hasPrefix("in place")
                        || $0.hasPrefix("raw-fallback")
                })
        }
    }

    @Test(arguments: [
        ("a slot class the device lacks", [payload(.image, "gpu")], FerryError.Code.notCompatible),
        ("a delta into a single-copy slot", [payload(.delta(delta), "bootloader")], .notCompatible),
        ("an image larger than its slot", [payload(.image, "tee", size: 2 << 20)], .deviceTooSmall),
        (
            "a delta whose target is larger than its slot",
            [
                payload(
                    .delta(
                        Manifest.DeltaInfo(
                            sourceSize: 1, sourceSHA256: digest("x"), targetSize: 9 << 20, targetSHA256: digest("y"),
                            sourceChecks: [])), "rootfs")
            ], .deviceTooSmall
        ),
        ("an image larger than a single-copy slot", [payload(.image, "bootloader", size: 9 << 20)], .deviceTooSmall),
        ("a bootloader payload for another strategy", [spl("gpt-switch")], .notCompatible),
        ("a bootloader that does not boot every group", [spl(groups: ["A"])], .notCompatible),
        ("a plain image for a bootloader with a strategy", [payload(.image, "spl")], .notCompatible),
        (
            "a bootloader payload for a slot without a strategy",
            [
                payload(
                    .bootloader(Manifest.BootloaderInfo(strategy: "raw-fallback", bootsGroups: ["A", "B"])),
                    "bootloader")
            ], .notCompatible
        ),
        ("a bootloader larger than its regions", [spl(size: (1 << 20) + 1)], .deviceTooSmall),
    ])
    func refuses(_ what: String, _ payloads: [Manifest.Payload], _ code: FerryError.Code) async throws {
        try await withTemporaryDirectory { dir in
            let planner = try Self.planner(dir)
            expectFerryError(code) { try planner.plan(Self.manifest(payloads)) }
        }
    }

    @Test func aMemberToCopyNeedsARecordAndRoom() async throws {
        try await withTemporaryDirectory { dir in
            let noRecord = try Self.planner(
                dir, records: ["rootfs_a": InstalledSlotRecord(sha256: Self.digest("rootfs").hex, size: 1)])
            expectFerryError(.stateInvalid) { try noRecord.plan(Self.manifest([Self.payload(.image, "rootfs")])) }
            let tooLarge = try Self.planner(
                dir,
                records: [
                    "modem_a": InstalledSlotRecord(sha256: Self.digest("modem").hex, size: 1),
                    "tee_a": InstalledSlotRecord(sha256: Self.digest("tee").hex, size: 2 << 20),
                ])
            expectFerryError(.deviceTooSmall) { try tooLarge.plan(Self.manifest([Self.payload(.image, "rootfs")])) }
        }
    }
}
