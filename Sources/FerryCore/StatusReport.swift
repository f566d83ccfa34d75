import FerryBootloader
import FerryJSON
import FerrySystem
import Logging

/// Everything `ferry status` shows, as data (its JSON form is documented in docs/status.md).
public struct StatusReport: Sendable, Equatable {
    public static let currentFormatVersion = 1

    public struct Installed: Sendable, Equatable {
        public var version: String?
        public var sha256: String?
        public var size: Int64?
        public var source: String?
        public var installedAt: String?
    }

    public struct Slot: Sendable, Equatable {
        public var name: String
        public var slotClass: String
        /// The device as configured (`disk.img partition PARTLABEL=rootfs_a`, `/dev/mmcblk0p2`).
        public var device: String
        /// Where it was found (`/dev/mmcblk0p2`, `disk.img partition 2`).
        public var location: String
        public var size: Int64
        /// `booted`, `inactive`, or `unknown` when the booted group cannot be told.
        public var state: String
        public var installed: Installed?
        /// A bootloader slot updated with a strategy: its name, the region (1 or 2) the disk
        /// selects now, or why that cannot be told.
        public var strategy: String? = nil
        public var activeRegion: Int? = nil
        public var strategyError: String? = nil
    }

    public struct Group: Sendable, Equatable {
        public var bootname: String
        public var booted: Bool
        /// Whether the bootloader boots this group next.
        public var primary: Bool
        /// `good` (bootable, confirmed), `trial` (made primary, not yet confirmed), `bad` (will
        /// not boot); absent when the boot environment cannot be read.
        public var boot: String?
        /// U-Boot: boot attempts left.
        public var triesLeft: Int?
        /// GRUB: tried since last confirmed.
        public var tried: Bool?
        public var confirmedAt: String?
        public var slots: [Slot]
    }

    public struct Rollback: Sendable, Equatable {
        public var from: String
        public var to: String?
        public var at: String?
    }

    /// An app of the app store (docs/apps.md).
    public struct App: Sendable, Equatable {
        public var name: String
        public var current: String?
        public var previous: String?
        public var versions: [String]
    }

    /// A settings document of the settings store (docs/settings.md).
    public struct Settings: Sendable, Equatable {
        public var name: String
        public var hasPrevious: Bool
    }

    public var formatVersion: Int
    public var compatible: String
    public var configuration: String
    public var sandbox: Bool
    public var booted: String?
    public var bootedSource: String
    public var bootloader: String
    public var stateDirectory: String
    /// The keyring bundles are checked against: the rotated one in the state directory, else the configured one.
    public var keyring: String?
    /// The security version floor.
    public var securityFloor: Int64
    /// The group booted next, and the boot order, as the bootloader's variables say.
    public var primary: String?
    public var bootOrder: [String]?
    /// Why the boot environment could not be read, if it could not.
    public var bootError: String?
    /// The last fallback `boot-check` recorded.
    public var rollback: Rollback?
    public var groups: [Group]
    /// Module slots the hardware has only once (no A/B), in no group.
    public var singleCopySlots: [Slot] = []
    /// Apps and settings documents, when their stores are configured.
    public var apps: [App] = []
    public var settings: [Settings] = []
    /// The apps and settings of a mixed bundle, staged for or active with a group.
    public var groupParts: GroupParts? = nil

    /// Gathers the status of the device described by `configuration` (read-only).
    /// - Throws: the configuration's device errors (missing, too small, duplicated), `.stateInvalid`.
    public static func gather(
        configuration: SystemConfiguration, commandLine: KernelCommandLine, mounts: MountTable
    ) throws(FerryError) -> StatusReport {
        var resolver = SlotResolver()
        let slots = try resolver.resolveAll(configuration)
        let booted = try BootedGroup.detect(
            configuration: configuration, slots: slots, commandLine: commandLine, mounts: mounts)
        let store = StateStore(directory: configuration.stateDirectory)
        let records = try store.slotRecords()
        let bootState = try store.bootState()
        let keyring = try? DeviceTrust.keyringPath(configuration)
        let securityFloor = try store.securityFloor()
        var primary: String? = nil
        var order: [String]? = nil
        var states: [GroupBootState] = []
        var bootError: String? = nil
        do {
            let control = try BootControl(
                configuration: configuration, booted: booted, logger: Logger(label: "ferry.status"))
            primary = try control.chooser.primary()
            order = try control.chooser.bootOrder()
            states = try control.chooser.states()
        } catch {
            // Status still reports the slots; the broken environment is shown, not fatal.
            bootError = error.message
        }
        func slotStatus(_ member: SlotConfiguration) -> Slot? {
            guard let resolved = slots.first(where: { $0.slot.name == member.name }) else { return nil }
            let state =
                member.singleCopy
                ? "single-copy"
                : booted.bootname == nil ? "unknown" : (member.bootname == booted.bootname ? "booted" : "inactive")
            var slot = Slot(
                name: member.name, slotClass: member.slotClass,
                device: Self.display(member.device, configuration),
                location: Paths.display(resolved.locationDescription, relativeTo: configuration.directory),
                size: resolved.byteCount, state: state,
                installed: records[member.name].map {
                    Installed(
                        version: $0.version, sha256: $0.sha256, size: $0.size, source: $0.source,
                        installedAt: $0.installedAt)
                })
            if let strategy = member.update { Self.describeBootloader(strategy, resolved, slot: &slot) }
            return slot
        }
        let singleCopySlots = configuration.slots.filter(\.singleCopy).compactMap(slotStatus)
        let groups = configuration.groups.map { group in
            let state = states.first { $0.bootname == group.bootname }
            let boot: String? = state.map {
                !$0.bootable ? "bad" : (bootState.pending == group.bootname ? "trial" : "good")
            }
            return Group(
                bootname: group.bootname, booted: group.bootname == booted.bootname,
                primary: group.bootname == primary, boot: boot, triesLeft: state?.triesLeft, tried: state?.tried,
                confirmedAt: bootState.confirmedAt[group.bootname],
                slots: group.slots.compactMap(slotStatus))
        }
        return StatusReport(
            formatVersion: currentFormatVersion, compatible: configuration.compatible,
            configuration: configuration.path,
            sandbox: configuration.sandbox, booted: booted.bootname, bootedSource: booted.source,
            bootloader: describeBootloader(configuration),
            stateDirectory: configuration.stateDirectory, keyring: keyring, securityFloor: securityFloor,
            primary: primary, bootOrder: order, bootError: bootError,
            rollback: bootState.rolledBackFrom.map {
                Rollback(from: $0, to: bootState.rolledBackTo, at: bootState.rolledBackAt)
            },
            groups: groups, singleCopySlots: singleCopySlots, apps: apps(configuration),
            settings: settings(configuration),
            groupParts: try store.groupParts())
    }

    /// A bootloader slot's strategy and the region its disk selects (read only).
    static func describeBootloader(_ strategy: BootloaderStrategy, _ resolved: ResolvedSlot, slot: inout Slot) {
        slot.strategy = strategy.name
        switch resolved.location {
        case .imageFile(let path), .blockDevice(let path, _):
            do { slot.activeRegion = try region(strategy, path: path, name: slot.name) } catch {
                slot.strategyError = error.message
            }
        case .diskPartition:
            slot.strategyError = "its device is a partition, not the boot disk"
        }
    }

    private static func region(_ strategy: BootloaderStrategy, path: String, name: String) throws(FerryError) -> Int {
        if case .emmcBoot = strategy {
            let area = try EMMCBootArea.open(path, forWriting: false)
            defer { area.close() }
            return try BootloaderUpdater(
                strategy: strategy, disk: area.register, partitions: area.partitions, name: name
            )
            .selection(inProgress: true).active + 1
        }
        let disk = try BlockDevice.openForReading(path)
        defer { try? disk.close() }
        return try BootloaderUpdater(strategy: strategy, disk: disk, name: name).selection(inProgress: true).active + 1
    }

    /// Which bootloader environment the device uses, and where.
    static func describeBootloader(_ configuration: SystemConfiguration) -> String {
        switch configuration.bootloader.kind {
        case .uboot:
            let place = configuration.bootloader.fwEnvConfig ?? configuration.bootloader.environment.first?.device ?? ""
            return "uboot (\(Paths.display(place, relativeTo: configuration.directory)))"
        case .grub:
            return
                "grub (\(Paths.display(configuration.bootloader.grubenv ?? "", relativeTo: configuration.directory)))"
        case .custom: return "custom (\(configuration.bootloader.command ?? ""))"
        }
    }

    /// The apps in the app store (none when no store is configured).
    static func apps(_ configuration: SystemConfiguration) -> [App] {
        guard let directory = configuration.appStore else { return [] }
        return AppStore(directory: directory, logger: Logger(label: "ferry.status")).list().map {
            App(name: $0.name, current: $0.current, previous: $0.previous, versions: $0.versions)
        }
    }

    /// The documents in the settings store (none when no store is configured).
    static func settings(_ configuration: SystemConfiguration) -> [Settings] {
        guard let directory = configuration.settingsStore else { return [] }
        return SettingsStore(directory: directory, configuration: configuration.settings).list().map {
            Settings(name: $0.name, hasPrevious: $0.hasPrevious)
        }
    }

    static func display(_ device: SlotDevice, _ configuration: SystemConfiguration) -> String {
        switch device {
        case .path(let path): Paths.display(path, relativeTo: configuration.directory)
        case .tag(let tag): "\(tag)"
        case .diskPartition(let disk, let tag):
            "\(Paths.display(disk, relativeTo: configuration.directory)) partition \(tag)"
        }
    }

    /// The documented JSON form (docs/status.md): absent values are left out.
    public var json: JSONValue {
        func object(_ pairs: [(String, JSONValue?)]) -> JSONValue {
            var members: [String: JSONValue] = [:]
            for (key, value) in pairs { if let value { members[key] = value } }
            return .object(members)
        }
        func number(_ value: Int64?) -> JSONValue? { value.map { .number(Double($0)) } }
        func string(_ value: String?) -> JSONValue? { value.map { .string($0) } }
        func slotJSON(_ slot: Slot) -> JSONValue {
            object([
                ("name", .string(slot.name)), ("class", .string(slot.slotClass)),
                ("device", .string(slot.device)), ("location", .string(slot.location)),
                ("size", number(slot.size)), ("state", .string(slot.state)),
                (
                    "installed",
                    slot.installed.map { installed in
                        object([
                            ("version", string(installed.version)), ("sha256", string(installed.sha256)),
                            ("size", number(installed.size)), ("source", string(installed.source)),
                            ("installedAt", string(installed.installedAt)),
                        ])
                    }
                ),
                ("strategy", string(slot.strategy)), ("activeRegion", number(slot.activeRegion.map(Int64.init))),
                ("strategyError", string(slot.strategyError)),
            ])
        }
        let groups = self.groups.map { group in
            object([
                ("bootname", .string(group.bootname)), ("booted", .bool(group.booted)),
                ("primary", .bool(group.primary)),
                ("boot", string(group.boot)), ("triesLeft", number(group.triesLeft.map(Int64.init))),
                ("tried", group.tried.map(JSONValue.bool)), ("confirmedAt", string(group.confirmedAt)),
                (
                    "slots",
                    .array(
                        group.slots.map { slot in slotJSON(slot) })
                ),
            ])
        }
        return object([
            ("formatVersion", .number(Double(formatVersion))), ("compatible", .string(compatible)),
            ("configuration", .string(configuration)), ("sandbox", .bool(sandbox)), ("booted", string(booted)),
            ("bootedSource", .string(bootedSource)), ("bootloader", .string(bootloader)),
            ("stateDirectory", .string(stateDirectory)), ("keyring", string(keyring)),
            ("securityFloor", .number(Double(securityFloor))), ("primary", string(primary)),
            ("bootOrder", bootOrder.map { .array($0.map(JSONValue.string)) }), ("bootError", string(bootError)),
            (
                "rollback",
                rollback.map { object([("from", .string($0.from)), ("to", string($0.to)), ("at", string($0.at))]) }
            ),
            ("groups", .array(groups)),
            ("singleCopySlots", singleCopySlots.isEmpty ? nil : .array(singleCopySlots.map(slotJSON))),
            (
                "apps",
                apps.isEmpty
                    ? nil
                    : .array(
                        apps.map { app in
                            object([
                                ("name", .string(app.name)), ("current", string(app.current)),
                                ("previous", string(app.previous)),
                                ("versions", .array(app.versions.map(JSONValue.string))),
                            ])
                        })
            ),
            (
                "settings",
                settings.isEmpty
                    ? nil
                    : .array(
                        settings.map { object([("name", .string($0.name)), ("previousKept", .bool($0.hasPrevious))]) })
            ),
            (
                "groupParts",
                groupParts.map { record in
                    object([
                        ("group", .string(record.group)), ("bundle", .string(record.bundle)),
                        ("version", .string(record.version)),
                        ("state", .string(record.state.rawValue)),
                        (
                            "parts",
                            .array(
                                record.parts.map { part in
                                    object([
                                        ("kind", .string(part.kind.rawValue)), ("name", .string(part.name)),
                                        ("version", string(part.version)),
                                    ])
                                })
                        ),
                    ])
                }
            ),
        ])
    }
}
