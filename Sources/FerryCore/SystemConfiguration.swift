import FerryBootloader
import FerryJSON
import FerryNet
import FerrySystem
import SystemPackage

/// Where a slot lives.
public enum SlotDevice: Sendable, Equatable, CustomStringConvertible {
    /// A block device node or a regular (image) file, by absolute path.
    case path(String)
    /// A block device found by tag (`PARTLABEL=`, `PARTUUID=`, `LABEL=`, `UUID=`) among the system's devices.
    case tag(DeviceTag)
    /// A partition of a disk image file (Ferry attaches a loop device to write it).
    case diskPartition(disk: String, partition: DeviceTag)

    public var description: String {
        switch self {
        case .path(let path): path
        case .tag(let tag): "\(tag)"
        case .diskPartition(let disk, let partition): "\(disk) partition \(partition)"
        }
    }
}

/// One slot: a place an image of one slot class is written to, member of one A/B group.
public struct SlotConfiguration: Sendable, Equatable {
    /// Unique slot name (`rootfs_a`).
    public var name: String
    /// Slot class (`rootfs`, `modem`, `tee`, …): which payloads it takes.
    public var slotClass: String
    /// The bootname of the group it belongs to (`A`); empty for a single-copy slot.
    public var bootname: String
    public var device: SlotDevice
    /// The size the configuration promises; the device must be at least this large.
    public var declaredSize: Int64?
    /// A module slot the hardware has only once (no A/B): in no group, never the rootfs.
    public var singleCopy: Bool = false
    /// The opt-in for writing a single-copy slot in place (a cut during the write leaves it torn).
    public var writeInPlace: Bool = false
    /// A single-copy bootloader updated atomically (docs/bootloader-updates.md): `device` is then
    /// the boot disk, and the strategy's regions are byte ranges of it.
    public var update: BootloaderStrategy? = nil
}

/// A slot group: the slots booted together under one bootname (group A = rootfs_a + modem_a + tee_a).
public struct SlotGroup: Sendable, Equatable {
    public var bootname: String
    /// The members, sorted by slot class.
    public var slots: [SlotConfiguration]

    public func slot(ofClass slotClass: String) -> SlotConfiguration? { slots.first { $0.slotClass == slotClass } }
}

/// Which bootloader environment Ferry edits to switch groups.
public struct BootloaderConfiguration: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case uboot, grub, custom }
    public var kind: Kind
    /// U-Boot: an `fw_env.config` describing where the environment lives.
    public var fwEnvConfig: String?
    /// U-Boot: the environment's copies given directly (instead of `fwEnvConfig`).
    public var environment: [UBootEnvironmentLocation]
    /// GRUB: the environment block file.
    public var grubenv: String?
    /// Boot attempts a new group gets (U-Boot `BOOT_<x>_LEFT`).
    public var tries: Int
    /// Custom backend: the executable implementing get-primary/set-primary/get-state/set-state.
    public var command: String?
    /// U-Boot: CRC byte order of the target (`little`, default, or `big`).
    public var byteOrder: UBootEnvironmentFormat.ByteOrder
    /// U-Boot: redundancy flag scheme (`incremental`, default, or `boolean` for NOR).
    public var flagScheme: UBootEnvironmentFormat.FlagScheme
    /// U-Boot: allow writing a single raw environment copy in place (not atomic: see docs/boot-control.md).
    public var allowSingleRawCopy: Bool
    /// Whether `ferry boot-check` confirms the booted group when its health check passes (default true).
    public var confirmInBootCheck: Bool
}

/// Commands Ferry runs at fixed points.
/// The `apps` object: how app-only updates are kept and checked.
public struct AppsConfiguration: Sendable, Equatable {
    /// Versions kept besides the active one (default 1: the previous one).
    public var keep: Int
    /// Runs after an app is activated (`FERRY_APP`, `FERRY_APP_VERSION`, `FERRY_APP_DIR` in its
    /// environment); a failure or timeout switches the app back.
    public var healthCheck: String?
    public var timeoutSeconds: Int
}

/// The `settings` object: how settings updates are checked.
public struct SettingsConfiguration: Sendable, Equatable {
    /// XSD per settings name (XML documents of that name must validate).
    public var schemas: [String: String]
    /// Run with the candidate document's path before it replaces the active one; must exit 0.
    public var validate: String?
    /// Run after a replacement; a failure or timeout puts the previous document back.
    public var healthCheck: String?
    public var timeoutSeconds: Int
}

public struct HooksConfiguration: Sendable, Equatable {
    public var preInstall: String?
    public var postInstall: String?
    public var healthCheck: String?
    public var timeoutSeconds: Int
}

/// The device's key for encrypted bundles (`deviceKey`, docs/encryption.md).
public struct DeviceKeyConfiguration: Sendable, Equatable {
    /// A PEM file's path, or a URI of a key an OpenSSL provider holds (`handle:0x81000001`).
    public var key: String
    /// The device certificate (PEM): which of an envelope's recipients is this device.
    public var certificate: String?
    /// OpenSSL providers to load for the key (`tpm2`, `pkcs11`); the default provider always is.
    public var providers: [String]
    /// An OpenSSL configuration file loaded for the key first (a provider's settings).
    public var opensslConfig: String?
}

/// The device's system configuration (`/etc/ferry/system.json`): what the slots are and how the
/// device trusts, boots and stores state. See docs/configuration.md for every key.
///
/// Parsing is strict: an unknown key, a missing required key, a slot without a partner in every
/// other group or two slots on one device are errors naming the key. Whether the devices exist and
/// are large enough is checked when they are resolved (`SlotResolver`).
public struct SystemConfiguration: Sendable {
    public static let defaultPath = "/etc/ferry/system.json"
    public static let supportedFormatVersion: Int64 = 1

    /// The file it was read from.
    public var path: String
    /// The folder relative paths resolve against.
    public var directory: String
    public var compatible: String
    public var sandbox: Bool
    public var stateDirectory: String
    public var bootloader: BootloaderConfiguration
    public var keyring: String?
    public var signatureThreshold: Int
    /// Signer certificate fingerprints (SHA-256 of the DER certificate, hex) that never count.
    public var denyList: [String]
    /// The key that opens bundles encrypted to this device.
    public var deviceKey: DeviceKeyConfiguration?
    /// Refuse bundles that are not encrypted.
    public var requireEncryption: Bool
    /// TLS pins, CA file, client identity, timeouts and retries for every download (`tlsPins`, `network`).
    public var transport: TransportOptions
    public var updateURL: String?
    public var appStore: String?
    public var apps: AppsConfiguration
    public var settingsStore: String?
    public var settings: SettingsConfiguration
    public var hooks: HooksConfiguration
    /// All slots, sorted by bootname then class.
    public var slots: [SlotConfiguration]
    /// The groups, sorted by bootname.
    public var groups: [SlotGroup]

    /// The slot called `name`.
    public func slot(named name: String) -> SlotConfiguration? { slots.first { $0.name == name } }

    /// The group with `bootname`.
    public func group(_ bootname: String) -> SlotGroup? { groups.first { $0.bootname == bootname } }

    /// The single-copy slot of `slotClass` (docs/configuration.md), if the device has one.
    public func singleCopySlot(ofClass slotClass: String) -> SlotConfiguration? {
        slots.first { $0.singleCopy && $0.slotClass == slotClass }
    }

    /// The path of the configuration to use: `--config`, else `FERRY_CONFIG`, else the default.
    public static func locate(explicit: String?, environment: [String: String]) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let fromEnvironment = environment["FERRY_CONFIG"], !fromEnvironment.isEmpty { return fromEnvironment }
        return defaultPath
    }

    /// Reads and validates the configuration file at `path`.
    /// - Throws: `.configurationNotFound` when it cannot be read, `.configurationInvalid` otherwise.
    public static func load(_ path: String) throws(FerryError) -> SystemConfiguration {
        let absolute = Paths.absolute(path)
        let bytes: [UInt8]
        do { bytes = try TextFile.readBytes(absolute, limit: 1 << 20) } catch {
            throw FerryError(
                code: .configurationNotFound,
                message: "cannot read the system configuration '\(path)': \(error.message)",
                cause: error)
        }
        return try parse(bytes, path: absolute)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    public static func parse(_ bytes: [UInt8], path: String) throws(FerryError) -> SystemConfiguration {
        let file = path
        let directory = Paths.directory(of: path)
        var root = try StrictObject(
            JSONValue.parse(bytes, what: "system configuration '\(file)'", code: .configurationInvalid), path: "",
            file: file)
        let version = try root.integer("formatVersion", in: 1...Int64(Int32.max)) ?? 1
        guard version <= supportedFormatVersion else {
            throw root.invalid("formatVersion", "is \(version), but this Ferry reads up to \(supportedFormatVersion)")
        }
        let compatible = try root.requiredString("compatible")
        let sandbox = try root.bool("sandbox") ?? false
        let stateDirectory = Paths.resolve(try root.string("stateDirectory") ?? "/var/lib/ferry", against: directory)
        let bootloader = try parseBootloader(&root, directory: directory)
        let keyring = try root.string("keyring").map { Paths.resolve($0, against: directory) }
        let threshold = Int(try root.integer("signatureThreshold", in: 1...64) ?? 1)
        let denyList = try root.stringArray("denyList").map { $0.lowercased() }
        for (index, entry) in denyList.enumerated() where entry.count != 64 || !entry.allSatisfy(\.isHexDigit) {
            throw root.invalid("denyList[\(index)]", "must be a SHA-256 certificate fingerprint (64 hex digits)")
        }
        let deviceKey = try parseDeviceKey(&root, directory: directory)
        let requireEncryption = try root.bool("requireEncryption") ?? false
        if requireEncryption && deviceKey == nil {
            throw root.invalid("requireEncryption", "needs a deviceKey to open the encrypted bundles it requires")
        }
        let transport = try parseTransport(&root, directory: directory)
        let updateURL = try root.string("updateURL")
        if let updateURL, !updateURL.hasPrefix("https://") {
            throw root.invalid("updateURL", "must be an https:// URL (Ferry never downloads over plain HTTP)")
        }
        let appStore = try root.string("appStore").map { Paths.resolve($0, against: directory) }
        let settingsStore = try root.string("settingsStore").map { Paths.resolve($0, against: directory) }
        var apps = AppsConfiguration(keep: 1, healthCheck: nil, timeoutSeconds: 60)
        if var object = try root.object("apps") {
            apps.keep = Int(try object.integer("keep", in: 1...100) ?? 1)
            apps.healthCheck = try object.string("healthCheck").map { Paths.resolve($0, against: directory) }
            apps.timeoutSeconds = Int(try object.integer("timeoutSeconds", in: 1...86_400) ?? 60)
            try object.finish()
        }
        var settings = SettingsConfiguration(schemas: [:], validate: nil, healthCheck: nil, timeoutSeconds: 60)
        if var object = try root.object("settings") {
            if case .object(let schemas)? = object.raw("schemas") {
                for (name, value) in schemas {
                    guard case .string(let path) = value else {
                        throw object.invalid("schemas.\(name)", "must be a path")
                    }
                    settings.schemas[name] = Paths.resolve(path, against: directory)
                }
            } else if object.raw("schemas") != nil {
                throw object.invalid("schemas", "must be an object of XSD paths by settings name")
            }
            settings.validate = try object.string("validate").map { Paths.resolve($0, against: directory) }
            settings.healthCheck = try object.string("healthCheck").map { Paths.resolve($0, against: directory) }
            settings.timeoutSeconds = Int(try object.integer("timeoutSeconds", in: 1...86_400) ?? 60)
            try object.finish()
        }
        let hooks = try parseHooks(&root, directory: directory)
        let slots = try parseSlots(&root, directory: directory)
        try root.finish()

        let groups = try makeGroups(slots, file: file)
        if sandbox {
            if let slot = slots.first(where: { !$0.isImageFileSlot }) {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(file): sandbox: sandbox mode needs every slot to be an image file, but slot '\(slot.name)' is '\(slot.device)'"
                )
            }
        }
        return SystemConfiguration(
            path: file, directory: directory, compatible: compatible, sandbox: sandbox, stateDirectory: stateDirectory,
            bootloader: bootloader, keyring: keyring, signatureThreshold: threshold, denyList: denyList,
            deviceKey: deviceKey, requireEncryption: requireEncryption, transport: transport, updateURL: updateURL,
            appStore: appStore, apps: apps, settingsStore: settingsStore, settings: settings, hooks: hooks,
            slots: slots, groups: groups)
    }

    /// `deviceKey`: a key file's path, or an object with `key` (a path or a provider's URI),
    /// `certificate`, `providers` and `opensslConfig`.
    private static func parseDeviceKey(_ root: inout StrictObject, directory: String) throws(FerryError)
        -> DeviceKeyConfiguration?
    {
        func resolveKey(_ text: String) -> String {
            // A provider's URI (`handle:…`, `pkcs11:…`, `file:…`) stays as it is; a path is resolved.
            if let colon = text.firstIndex(of: ":"), !text[..<colon].contains("/") { return text }
            return Paths.resolve(text, against: directory)
        }
        if case .string? = root.raw("deviceKey") {
            let text = try root.requiredString("deviceKey")
            return DeviceKeyConfiguration(key: resolveKey(text), certificate: nil, providers: [], opensslConfig: nil)
        }
        guard var object = try root.object("deviceKey") else { return nil }
        let key = try object.requiredString("key")
        let configuration = DeviceKeyConfiguration(
            key: resolveKey(key),
            certificate: try object.string("certificate").map { Paths.resolve($0, against: directory) },
            providers: try object.stringArray("providers"),
            opensslConfig: try object.string("opensslConfig").map { Paths.resolve($0, against: directory) })
        for (index, name) in configuration.providers.enumerated() where name.isEmpty || name.contains("/") {
            throw object.invalid("providers[\(index)]", "must be a provider's name (tpm2, pkcs11)")
        }
        try object.finish()
        return configuration
    }

    /// `tlsPins` (an array for every host, or an object of arrays by host with `*` for the others)
    /// and the `network` object.
    private static func parseTransport(_ root: inout StrictObject, directory: String) throws(FerryError)
        -> TransportOptions
    {
        func pins(_ value: JSONValue, key: String) throws(FerryError) -> [TLSPin] {
            guard case .array(let items) = value else { throw root.invalid(key, "must be an array of pins") }
            var result: [TLSPin] = []
            for (index, item) in items.enumerated() {
                guard case .string(let text) = item else { throw root.invalid("\(key)[\(index)]", "must be a string") }
                do { result.append(try TLSPin(parsing: text)) } catch {
                    throw root.invalid("\(key)[\(index)]", error.message)
                }
            }
            return result
        }
        var set = PinSet()
        switch root.raw("tlsPins") {
        case nil: break
        case .object(let hosts)?:
            for (host, value) in hosts {
                if host == "*" {
                    set.anyHost = try pins(value, key: "tlsPins.*")
                } else {
                    set.byHost[host.lowercased()] = try pins(value, key: "tlsPins.\(host)")
                }
            }
        case let value?:
            set.anyHost = try pins(value, key: "tlsPins")
        }
        var options = TransportOptions(pins: set)
        guard var network = try root.object("network") else { return options }
        options.caFile = try network.string("caFile").map { Paths.resolve($0, against: directory) }
        options.clientCertificate = try network.string("clientCertificate").map {
            Paths.resolve($0, against: directory)
        }
        options.clientKey = try network.string("clientKey").map { Paths.resolve($0, against: directory) }
        if options.clientKey != nil && options.clientCertificate == nil {
            throw network.invalid("clientKey", "needs clientCertificate")
        }
        if let value = try network.integer("connectTimeoutSeconds", in: 1...3600) {
            options.connectTimeoutSeconds = Int(value)
        }
        if let value = try network.integer("stallTimeoutSeconds", in: 1...3600) {
            options.stallTimeoutSeconds = Int(value)
        }
        if let value = try network.integer("retries", in: 0...100) { options.retries = Int(value) }
        if let value = try network.number("retryDelaySeconds", in: 0...600) { options.retryDelaySeconds = value }
        if let value = try network.integer("maximumRedirects", in: 0...20) { options.maximumRedirects = Int(value) }
        if let value = try network.integer("maximumReconnects", in: 0...10_000) {
            options.maximumReconnects = Int(value)
        }
        if let value = try network.integer("minimumBytesPerSecond", in: 0...(1 << 30)) {
            options.minimumBytesPerSecond = Int(value)
        }
        if let value = try network.integer("rateWindowSeconds", in: 1...3600) { options.rateWindowSeconds = Int(value) }
        try network.finish()
        return options
    }

    private static func parseBootloader(_ root: inout StrictObject, directory: String) throws(FerryError)
        -> BootloaderConfiguration
    {
        guard var object = try root.object("bootloader") else { throw root.invalid("bootloader", "is required") }
        let typeName = try object.requiredString("type")
        guard let kind = BootloaderConfiguration.Kind(rawValue: typeName) else {
            throw object.invalid(
                "type",
                "must be one of \(BootloaderConfiguration.Kind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(typeName)'"
            )
        }
        let fwEnvConfig = try object.string("fwEnvConfig").map { Paths.resolve($0, against: directory) }
        let environment = try parseEnvironmentLocations(&object, directory: directory)
        let grubenv = try object.string("grubenv").map { Paths.resolve($0, against: directory) }
        let tries = Int(try object.integer("tries", in: 1...15) ?? 3)
        let command = try object.string("command").map { Paths.resolve($0, against: directory) }
        let byteOrderName = try object.string("byteOrder") ?? "little"
        guard let byteOrder = UBootEnvironmentFormat.ByteOrder(rawValue: byteOrderName) else {
            throw object.invalid("byteOrder", "must be little or big, not '\(byteOrderName)'")
        }
        let schemeName = try object.string("flagScheme") ?? "incremental"
        guard let flagScheme = UBootEnvironmentFormat.FlagScheme(rawValue: schemeName) else {
            throw object.invalid("flagScheme", "must be incremental or boolean, not '\(schemeName)'")
        }
        let allowSingleRawCopy = try object.bool("allowSingleRawCopy") ?? false
        let confirmInBootCheck = try object.bool("confirmInBootCheck") ?? true
        try object.finish()
        switch kind {
        case .uboot where fwEnvConfig == nil && environment.isEmpty:
            throw object.invalid("fwEnvConfig", "is required for the uboot bootloader (or 'environment')")
        case .uboot where fwEnvConfig != nil && !environment.isEmpty:
            throw object.invalid("environment", "give either 'fwEnvConfig' or 'environment', not both")
        case .grub where grubenv == nil:
            throw object.invalid("grubenv", "is required for the grub bootloader")
        case .custom where command == nil:
            throw object.invalid("command", "is required for the custom bootloader")
        default: break
        }
        return BootloaderConfiguration(
            kind: kind, fwEnvConfig: fwEnvConfig, environment: environment, grubenv: grubenv, tries: tries,
            command: command, byteOrder: byteOrder,
            flagScheme: flagScheme, allowSingleRawCopy: allowSingleRawCopy, confirmInBootCheck: confirmInBootCheck)
    }

    /// `"environment": [{"device": "…", "offset": 1048576, "size": 16384}, …]`: one or two copies.
    private static func parseEnvironmentLocations(_ object: inout StrictObject, directory: String) throws(FerryError)
        -> [UBootEnvironmentLocation]
    {
        guard let value = object.raw("environment") else { return [] }
        guard case .array(let items) = value, (1...2).contains(items.count) else {
            throw object.invalid("environment", "must be an array of one or two copies")
        }
        var locations: [UBootEnvironmentLocation] = []
        for (index, item) in items.enumerated() {
            var copy = try StrictObject(item, path: object.keyPath("environment[\(index)]"), file: object.file)
            let device = Paths.resolve(try copy.requiredString("device"), against: directory)
            let offset = try copy.integer("offset", in: -(1 << 40)...(1 << 40)) ?? 0
            guard let size = try copy.integer("size", in: 6...(16 << 20)) else {
                throw copy.invalid("size", "is required")
            }
            try copy.finish()
            locations.append(UBootEnvironmentLocation(device: device, offset: offset, size: Int(size)))
        }
        if locations.count == 2 && locations[0].size != locations[1].size {
            throw object.invalid("environment", "both copies must have the same size")
        }
        return locations
    }

    private static func parseHooks(_ root: inout StrictObject, directory: String) throws(FerryError)
        -> HooksConfiguration
    {
        guard var object = try root.object("hooks") else {
            return HooksConfiguration(preInstall: nil, postInstall: nil, healthCheck: nil, timeoutSeconds: 300)
        }
        let hooks = HooksConfiguration(
            preInstall: try object.string("preInstall").map { Paths.resolve($0, against: directory) },
            postInstall: try object.string("postInstall").map { Paths.resolve($0, against: directory) },
            healthCheck: try object.string("healthCheck").map { Paths.resolve($0, against: directory) },
            timeoutSeconds: Int(try object.integer("timeoutSeconds", in: 1...86_400) ?? 300))
        try object.finish()
        return hooks
    }

    private static func parseSlots(_ root: inout StrictObject, directory: String) throws(FerryError)
        -> [SlotConfiguration]
    {
        guard var object = try root.object("slots") else { throw root.invalid("slots", "is required") }
        var slots: [SlotConfiguration] = []
        for name in object.keys {
            guard Self.isName(name) else {
                throw object.invalid(name, "slot names may use only letters, digits, '_', '-' and '.'")
            }
            guard var entry = try object.object(name) else { throw object.invalid(name, "must be an object") }
            let slotClass = try entry.requiredString("class")
            guard Self.isName(slotClass) else {
                throw entry.invalid("class", "may use only letters, digits, '_', '-' and '.'")
            }
            let singleCopy = try entry.bool("singleCopy") ?? false
            let writeInPlace = try entry.bool("writeInPlace") ?? false
            let bootname: String
            if singleCopy {
                guard try entry.string("bootname") == nil else {
                    throw entry.invalid("bootname", "a single-copy slot belongs to no group: leave 'bootname' out")
                }
                guard slotClass != "rootfs" else {
                    throw entry.invalid("singleCopy", "the rootfs is never single-copy: it needs a slot in every group")
                }
                bootname = ""
            } else {
                guard !writeInPlace else { throw entry.invalid("writeInPlace", "applies to single-copy slots only") }
                bootname = try entry.requiredString("bootname")
                guard Self.isName(bootname) else {
                    throw entry.invalid("bootname", "may use only letters, digits, '_', '-' and '.'")
                }
            }
            let size = try entry.integer("size", in: 1...Int64.max)
            let device = try parseDevice(&entry, directory: directory)
            let update = try parseUpdate(&entry, singleCopy: singleCopy, writeInPlace: writeInPlace)
            try entry.finish()
            slots.append(
                SlotConfiguration(
                    name: name, slotClass: slotClass, bootname: bootname, device: device, declaredSize: size,
                    singleCopy: singleCopy,
                    writeInPlace: writeInPlace, update: update))
        }
        try object.finish()
        guard !slots.isEmpty else { throw root.invalid("slots", "must name at least two slots (one per group)") }
        // The same device twice would let an install into one group overwrite the other.
        for (index, slot) in slots.enumerated() {
            if let other = slots[..<index].first(where: { $0.device == slot.device }) {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(root.file): slots.\(slot.name): device '\(slot.device)' is also the device of slot '\(other.name)'"
                )
            }
        }
        return slots.sorted { ($0.bootname, $0.slotClass) < ($1.bootname, $1.slotClass) }
    }

    /// A single-copy slot's atomic update strategy (`update`), checked for its layout.
    private static func parseUpdate(_ entry: inout StrictObject, singleCopy: Bool, writeInPlace: Bool)
        throws(FerryError)
        -> BootloaderStrategy?
    {
        guard var object = try entry.object("update") else { return nil }
        guard singleCopy else {
            throw entry.invalid("update", "applies to single-copy slots only (a bootloader the device has once)")
        }
        guard !writeInPlace else {
            throw entry.invalid("update", "a slot is either written in place or updated with a strategy, not both")
        }
        let name = try object.requiredString("strategy")
        if name == "emmc-boot" {
            // The boot partitions are whole devices: nothing to lay out.
            guard object.raw("regions") == nil else {
                throw object.invalid("regions", "does not apply to emmc-boot (boot0 and boot1 are whole devices)")
            }
            try object.finish()
            return .emmcBoot
        }
        guard case .array(let items)? = object.raw("regions") else {
            throw object.invalid(
                "regions", "is required: an array of two { \"offset\", \"size\" } byte ranges of the disk")
        }
        var regions: [BootRegion] = []
        for (index, item) in items.enumerated() {
            var region = try StrictObject(item, path: object.keyPath("regions[\(index)]"), file: object.file)
            guard let offset = try region.integer("offset", in: 0...Int64.max),
                let size = try region.integer("size", in: 1...Int64.max)
            else {
                throw object.invalid("regions[\(index)]", "needs \"offset\" and \"size\" in bytes")
            }
            try region.finish()
            regions.append(BootRegion(offset: offset, size: size))
        }
        let strategy: BootloaderStrategy
        switch name {
        case "mbr-switch":
            let pointer: BootloaderStrategy.MBRPointer
            if let partition = try object.integer("partition", in: 1...4) {
                pointer = .partition(Int(partition))
            } else {
                guard try object.string("pointer") == "grub-core" else {
                    throw object.invalid(
                        "pointer",
                        "must be \"grub-core\" (GRUB i386-pc's boot.img), or give \"partition\" (1–4) instead")
                }
                pointer = .grubCore
            }
            strategy = .mbrSwitch(regions: regions, pointer: pointer)
        case "gpt-switch":
            guard let partition = try object.integer("partition", in: 1...16_384) else {
                throw object.invalid(
                    "partition", "is required: the number of the GPT partition moved between the regions")
            }
            strategy = .gptSwitch(regions: regions, partition: Int(partition))
        case "raw-fallback":
            let header = try object.integer("headerSize", in: 512...(1 << 24)) ?? 512
            strategy = .rawFallback(copies: regions, headerSize: Int(header))
        default:
            throw object.invalid(
                "strategy", "must be one of \(BootloaderStrategy.names.joined(separator: ", ")), not '\(name)'")
        }
        try object.finish()
        if let problem = strategy.layoutProblem() { throw object.invalid("regions", problem) }
        return strategy
    }

    /// A slot's device: `device` (a path or a tag such as PARTLABEL=), or `disk` and `partition`.
    private static func parseDevice(_ entry: inout StrictObject, directory: String) throws(FerryError) -> SlotDevice {
        let devicePath = try entry.string("device")
        let disk = try entry.string("disk")
        let partition = try entry.string("partition")
        switch (devicePath, disk, partition) {
        case (let path?, nil, nil):
            if let tag = DeviceTag(parsing: path) {
                if case .number = tag {
                    throw entry.invalid("device", "a partition number needs 'disk' and 'partition' instead")
                }
                return .tag(tag)
            } else {
                return .path(Paths.resolve(path, against: directory))
            }
        case (nil, let disk?, let partition?):
            guard let tag = DeviceTag(parsing: partition) else {
                throw entry.invalid(
                    "partition",
                    "must be PARTLABEL=, PARTUUID=, LABEL=, UUID= or a partition number, not '\(partition)'")
            }
            return .diskPartition(disk: Paths.resolve(disk, against: directory), partition: tag)
        case (nil, _?, nil):
            throw entry.invalid("partition", "is required with 'disk'")
        case (nil, nil, _?):
            throw entry.invalid("disk", "is required with 'partition'")
        case (nil, nil, nil):
            throw entry.invalid("device", "is required (or 'disk' and 'partition')")
        default:
            throw entry.invalid("device", "give either 'device' or 'disk' and 'partition', not both")
        }
    }

    /// Groups slots by bootname and checks that every group has exactly the same slot classes.
    private static func makeGroups(_ all: [SlotConfiguration], file: String) throws(FerryError) -> [SlotGroup] {
        let slots = all.filter { !$0.singleCopy }
        for single in all where single.singleCopy {
            if let grouped = slots.first(where: { $0.slotClass == single.slotClass }) {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(file): slots.\(single.name): slot class '\(single.slotClass)' is single-copy here but has the A/B slot '\(grouped.name)'"
                )
            }
            if let other = all.first(where: {
                $0.singleCopy && $0.slotClass == single.slotClass && $0.name != single.name
            }) {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(file): slots.\(single.name): slot class '\(single.slotClass)' already has the single-copy slot '\(other.name)'"
                )
            }
        }
        var byBootname: [String: [SlotConfiguration]] = [:]
        for slot in slots { byBootname[slot.bootname, default: []].append(slot) }
        let groups = byBootname.keys.sorted().map { SlotGroup(bootname: $0, slots: byBootname[$0]!) }
        guard groups.count >= 2 else {
            throw FerryError(
                code: .configurationInvalid,
                message:
                    "\(file): slots: A/B updates need at least two groups, but every slot has bootname '\(groups.first?.bootname ?? "")'"
            )
        }
        for group in groups {
            var seen: [String: String] = [:]
            for slot in group.slots {
                if let other = seen[slot.slotClass] {
                    throw FerryError(
                        code: .configurationInvalid,
                        message:
                            "\(file): slots.\(slot.name): group \(group.bootname) already has a '\(slot.slotClass)' slot ('\(other)')"
                    )
                }
                seen[slot.slotClass] = slot.name
            }
        }
        let allClasses = Set(slots.map(\.slotClass))
        for group in groups {
            let classes = Set(group.slots.map(\.slotClass))
            if let missing = allClasses.subtracting(classes).sorted().first,
                let example = slots.first(where: { $0.slotClass == missing })
            {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(file): slots.\(example.name): slot class '\(missing)' has no slot in group \(group.bootname) (every group needs one slot of each class)"
                )
            }
        }
        return groups
    }

    static func isName(_ text: String) -> Bool {
        PlainName.isPlain(text) && text.count <= 64 && text != "." && text != ".."
    }
}

extension SlotConfiguration {
    /// Whether the slot is an image file or a partition of one (a sandbox's slots must all be).
    public var isImageFileSlot: Bool {
        switch device {
        case .diskPartition: return true
        case .tag: return false
        case .path(let path):
            // A path that does not exist yet cannot be judged here; resolution reports it.
            guard let status = try? FilePath(path).stat() else { return !path.hasPrefix("/dev/") }
            return status.type == .regular
        }
    }
}
