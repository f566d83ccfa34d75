import FerryBootloader
import FerryBundle
import FerryCrypto
import FerrySystem

/// What an install will do, decided before anything is written: one typed step per payload, in
/// the manifest's (and the stream's) order, then the members of the target group to make
/// consistent with the booted group, and whether a group switches.
public struct InstallPlan: Sendable {
    public enum Step: Sendable {
        /// A full image into a slot of the target group.
        case writeImage(Manifest.Payload, slot: SlotConfiguration)
        /// A block delta applied from the booted slot `source` into `slot` of the target group.
        case applyDelta(Manifest.Payload, Manifest.DeltaInfo, slot: SlotConfiguration, source: SlotConfiguration)
        /// A full image written in place into a single-copy slot (its configuration opts in).
        case writeSingleCopy(Manifest.Payload, slot: SlotConfiguration)
        /// A bootloader the device has once, updated with its slot's strategy: written where
        /// nothing boots from it, read back, then selected with one atomic write (before any group
        /// switch: it boots every group).
        case updateBootloader(Manifest.Payload, Manifest.BootloaderInfo, slot: SlotConfiguration)
        /// An app's version written into the app store (activated later, all or none).
        case stageApp(Manifest.Payload, Manifest.AppInfo)
        /// A settings document checked and staged (activated later, all or none).
        case stageSettings(Manifest.Payload, Manifest.SettingsInfo)

        public var payload: Manifest.Payload {
            switch self {
            case .writeImage(let payload, _), .applyDelta(let payload, _, _, _), .writeSingleCopy(let payload, _),
                .updateBootloader(let payload, _, _), .stageApp(let payload, _), .stageSettings(let payload, _):
                payload
            }
        }

        /// The slot the step writes, if it writes one.
        public var slot: SlotConfiguration? {
            switch self {
            case .writeImage(_, let slot), .applyDelta(_, _, let slot, _), .writeSingleCopy(_, let slot),
                .updateBootloader(_, _, let slot):
                slot
            case .stageApp, .stageSettings: nil
            }
        }
    }

    /// The steps, one per payload, in manifest order.
    public var steps: [Step]
    /// Members of the target group the bundle does not carry, given the booted member's recorded
    /// image after the payloads (a module-only bundle leaves the new group consistent).
    public var copies: [GroupCopy]
    /// The group made primary at the end; nil when none switches (apps and settings only, or
    /// single-copy modules only).
    public var switchedGroup: String?

    /// The slots the steps write, in order.
    public var writtenSlots: [SlotConfiguration] { steps.compactMap(\.slot) }
    /// Every slot opened exclusively for writing: the steps' and the copies' (bootloader slots
    /// are not: their disk is opened shared, see `bootloaderSlots`).
    public var slotsToOpen: [SlotConfiguration] {
        writtenSlots.filter { $0.update == nil } + copies.map(\.slot)
    }
    /// The bootloader slots updated with a strategy.
    public var bootloaderSteps: [(Manifest.Payload, SlotConfiguration)] {
        steps.compactMap { step in
            guard case .updateBootloader(let payload, _, let slot) = step else { return nil }
            return (payload, slot)
        }
    }
    /// Whether only the app and settings stores are written (no slot, no journal, no switch).
    public var writesStoresOnly: Bool { writtenSlots.isEmpty }
    /// The app and settings payloads (staged for the switched group, or activated at once).
    public var partPayloads: [Manifest.Payload] {
        steps.compactMap { step in
            switch step {
            case .stageApp(let payload, _), .stageSettings(let payload, _): payload
            default: nil
            }
        }
    }
}

/// A member of the target group the bundle does not carry, and the booted member whose recorded
/// image it must hold.
public struct GroupCopy: Sendable {
    public var slot: SlotConfiguration
    public var source: SlotConfiguration
    public var record: InstalledSlotRecord
    public var sha256: SHA256Digest
    public var size: Int64
}

/// Turns a verified manifest into an ``InstallPlan`` for this device, or refuses it. Pure: it
/// reads nothing but what it is given (slot capacities come from a function), so every case is
/// table-tested without root or devices.
public struct InstallPlanner {
    public let configuration: SystemConfiguration
    /// The booted group, and the group an install writes (the other one).
    public let booted: String
    public let target: String
    /// The installed-slot records (what each slot of the booted group holds).
    public let records: [String: InstalledSlotRecord]
    /// The size of a slot in bytes (resolving its device).
    public let capacity: (SlotConfiguration) throws(FerryError) -> Int64

    public init(
        configuration: SystemConfiguration, booted: String, target: String, records: [String: InstalledSlotRecord],
        capacity: @escaping (SlotConfiguration) throws(FerryError) -> Int64
    ) {
        self.configuration = configuration
        self.booted = booted
        self.target = target
        self.records = records
        self.capacity = capacity
    }

    /// - Throws: `.notCompatible` (a slot class the device lacks, a delta into a single-copy
    ///   slot or without a booted slot to read), `.deviceTooSmall`, `.bundleInvalid` (a member
    ///   the bundle lacks and the booted group cannot give), `.stateInvalid` (no record to copy from).
    public func plan(_ manifest: Manifest) throws(FerryError) -> InstallPlan {
        guard let group = configuration.group(target), let bootedGroup = configuration.group(booted) else {
            throw FerryError(
                code: .internal, message: "no group \(configuration.group(target) == nil ? target : booted)")
        }
        var steps: [InstallPlan.Step] = []
        for payload in manifest.payloads {
            switch payload.kind {
            case .app(let info): steps.append(.stageApp(payload, info))
            case .settings(let info): steps.append(.stageSettings(payload, info))
            case .image, .delta: steps.append(try slotStep(payload, group: group, bootedGroup: bootedGroup))
            case .bootloader(let info): steps.append(try bootloaderStep(payload, info))
            }
        }
        var plan = InstallPlan(steps: steps, copies: [], switchedGroup: nil)
        // A bundle of single-copy modules (or of apps and settings) alone switches no group.
        let groupSlots = steps.compactMap { step -> SlotConfiguration? in
            switch step {
            case .writeSingleCopy, .updateBootloader: nil
            default: step.slot
            }
        }
        guard !groupSlots.isEmpty else { return plan }
        plan.switchedGroup = target
        for slot in group.slots where !groupSlots.contains(where: { $0.name == slot.name }) {
            plan.copies.append(try copy(into: slot, bootedGroup: bootedGroup))
        }
        return plan
    }

    /// The step that writes an image or a delta payload: into the target group's slot of its
    /// class, or in place into a single-copy slot of that class.
    private func slotStep(_ payload: Manifest.Payload, group: SlotGroup, bootedGroup: SlotGroup) throws(FerryError)
        -> InstallPlan.Step
    {
        if let single = configuration.singleCopySlot(ofClass: payload.target) {
            if let strategy = single.update {
                throw FerryError(
                    code: .notCompatible,
                    message:
                        "payload '\(payload.member)' is a plain \(payload.type), but slot '\(single.name)' is a bootloader updated with \(strategy.name): it takes payloads of type bootloader only"
                )
            }
            guard payload.delta == nil else {
                throw FerryError(
                    code: .notCompatible,
                    message:
                        "payload '\(payload.member)' is a delta, but slot '\(single.name)' is single-copy: a delta cannot read the copy it overwrites"
                )
            }
            try checkFits(payload, into: single)
            return .writeSingleCopy(payload, slot: single)
        }
        guard let slot = group.slot(ofClass: payload.target) else {
            throw FerryError(
                code: .notCompatible,
                message: "the bundle has a payload for slot class '\(payload.target)', which this device does not have")
        }
        try checkFits(payload, into: slot)
        guard case .delta(let info) = payload.kind else { return .writeImage(payload, slot: slot) }
        guard let source = bootedGroup.slot(ofClass: payload.target) else {
            throw FerryError(
                code: .notCompatible,
                message:
                    "delta payload '\(payload.member)': the booted group \(booted) has no '\(payload.target)' slot to read"
            )
        }
        return .applyDelta(payload, info, slot: slot, source: source)
    }

    /// A bootloader payload: for a single-copy slot of its class with the same strategy, naming
    /// every group of the device (it is switched before the groups are, and must boot them all).
    private func bootloaderStep(_ payload: Manifest.Payload, _ info: Manifest.BootloaderInfo) throws(FerryError)
        -> InstallPlan.Step
    {
        guard let slot = configuration.singleCopySlot(ofClass: payload.target), let strategy = slot.update else {
            throw FerryError(
                code: .notCompatible,
                message:
                    "the bundle has a bootloader payload for slot class '\(payload.target)', but this device has no single-copy slot of that class with an update strategy"
            )
        }
        guard info.strategy == strategy.name else {
            throw FerryError(
                code: .notCompatible,
                message:
                    "bootloader payload '\(payload.member)' is made for \(info.strategy), but slot '\(slot.name)' is updated with \(strategy.name)"
            )
        }
        let missing = configuration.groups.map(\.bootname).filter { !info.bootsGroups.contains($0) }
        guard missing.isEmpty else {
            throw FerryError(
                code: .notCompatible,
                message:
                    "bootloader payload '\(payload.member)' says it boots groups \(info.bootsGroups.joined(separator: ", ")), not \(missing.joined(separator: ", ")): a bootloader switched before the groups must boot every one"
            )
        }
        let limit: Int64
        if let fixed = strategy.capacity { limit = fixed } else { limit = try capacity(slot) }
        guard payload.size <= limit else {
            throw FerryError(
                code: .deviceTooSmall,
                message:
                    "bootloader payload '\(payload.member)' is \(payload.size) bytes, larger than the \(limit)-byte \(strategy.capacity == nil ? "boot partitions" : "regions") of slot '\(slot.name)'"
            )
        }
        return .updateBootloader(payload, info, slot: slot)
    }

    private func checkFits(_ payload: Manifest.Payload, into slot: SlotConfiguration) throws(FerryError) {
        let bytes = try capacity(slot)
        guard payload.imageSize <= bytes else {
            throw FerryError(
                code: .deviceTooSmall,
                message:
                    "payload '\(payload.member)' is \(payload.imageSize) bytes but slot '\(slot.name)' holds \(bytes)")
        }
    }

    /// A member of the target group the bundle does not update gets the image its booted
    /// counterpart was installed with, which the state records.
    private func copy(into slot: SlotConfiguration, bootedGroup: SlotGroup) throws(FerryError) -> GroupCopy {
        guard let source = bootedGroup.slot(ofClass: slot.slotClass) else {
            throw FerryError(
                code: .bundleInvalid,
                message:
                    "the bundle has no payload for slot class '\(slot.slotClass)', and the booted group \(booted) has no such slot to copy"
            )
        }
        guard let record = records[source.name], let hex = record.sha256, let digest = SHA256Digest(hex: hex),
            let size = record.size
        else {
            throw FerryError(
                code: .stateInvalid,
                message:
                    "the bundle has no payload for slot class '\(slot.slotClass)', and there is no record of the image in the booted slot '\(source.name)' to copy it from (install a bundle that carries it)"
            )
        }
        let bytes = try capacity(slot)
        guard size <= bytes else {
            throw FerryError(
                code: .deviceTooSmall,
                message: "slot '\(source.name)' holds a \(size)-byte image but slot '\(slot.name)' only \(bytes) bytes")
        }
        return GroupCopy(slot: slot, source: source, record: record, sha256: digest, size: size)
    }
}
