import FerryBootloader
import FerryBundle
import FerryCrypto
import FerryDelta
import FerryJSON
import FerrySystem
import Logging

/// Installs a signed bundle into the inactive slot group, then makes it primary.
///
/// The order is the safety argument (ARCHITECTURE.md §4): everything that can be checked is
/// checked before the first write (signatures and policy, payload sizes against the slots); the
/// target group is marked bad before its first byte is written; every chunk is hash-checked
/// before it is written; every slot is synced and read back from the device before the group is
/// made primary. A failure at any point leaves the booted group and the boot order untouched
/// and the target group bad.
public struct Installer {
    public let configuration: SystemConfiguration
    public let booted: BootedGroup
    public let logger: Logger
    /// Called as the install goes (the CLI renders it).
    public var progress: (ProgressEvent) -> Void = { _ in }

    public init(configuration: SystemConfiguration, booted: BootedGroup, logger: Logger) {
        self.configuration = configuration
        self.booted = booted
        self.logger = logger
    }

    /// Bytes written between checkpoints (slot synced, then journal updated).
    public var checkpointBytes: Int64 = 32 << 20
    /// Wraps each opened slot before it is written (the fault-injection seam of the tests).
    public var wrapDevice: (BlockDevice) -> any BlockTarget = { $0 }

    public struct Result: Sendable {
        /// Whether it continued an interrupted install of the same bundle.
        public var resumed: Bool
        public var target: String
        public var version: String
        public var slots: [String]
        /// Members not in the bundle, made consistent with the booted group (copied or found equal).
        public var copied: [String]
        /// Apps installed and activated (an app-only bundle: no group switch).
        public var apps: [String] = []
        public var adoptedKeyring: Bool
        /// Bootloader slots updated with their strategy (`esp (gpt-switch)`); also in `slots`.
        public var bootloaders: [String] = []
    }

    /// Verifies and installs the bundle read from `source`, as the safe sequence of
    /// ARCHITECTURE.md §1: verify → plan → refusals → hook → journal → mark bad → steps (each
    /// read back) → records → switch. Nothing is written before the refusals have passed.
    /// - Parameters:
    ///   - allowDowngrade: accept a version older than the booted one (never below the security floor).
    ///   - force: install even while the booted group is on trial (not yet confirmed).
    ///   - indexed: the update index entry that chose the bundle (`ferry update`): a bundle with
    ///     another manifest is refused before anything is written.
    /// - Throws: every bundle, policy, device and boot environment error, before or during writing.
    public func install(
        from source: any ByteSource, bundleName: String, allowDowngrade: Bool, force: Bool,
        indexed: UpdateIndex.Entry? = nil
    ) throws(FerryError) -> Result {
        let control = try BootControl(configuration: configuration, booted: booted, logger: logger)
        let store = StateStore(directory: configuration.stateDirectory)
        let (current, target) = try groups(control)
        try control.parts.recoverInterruptedInstall()
        try refuseOnTrial(current, force: force, store: store)

        // 1. Verify signatures and policy.
        let bundle = try verify(source, allowDowngrade: allowDowngrade, indexed: indexed)

        // 2. Plan; apps and settings alone switch no group and write no slot.
        let plan = try planner(booted: current, target: target, store: store).plan(bundle.manifest)
        try control.parts.checkCanStage(plan.partPayloads)
        if plan.writesStoresOnly { return try installApps(bundle, bundleName: bundleName) }

        // 3. Every refusal that can be known before writing; then the pre-install hook.
        let access = SlotAccess(
            configuration: configuration, booted: booted, mounts: try MountTable.current(), logger: logger)
        try checkBeforeWriting(plan, access: access, journal: try pendingJournal(bundle, target: target, store: store))
        let hooks = InstallHooks(
            configuration: configuration, manifest: bundle.manifest, bundle: bundleName, booted: current,
            target: target,
            plan: plan)
        try hooks.run(.preInstall)

        // 4. The journal (continued, or new); the target group marked bad before its first byte.
        var (journal, resumed) = try continuedJournal(
            manifestBytes: bundle.reader.manifestBytes, target: target, bundle: bundleName, store: store)
        if let group = plan.switchedGroup {
            try control.parts.settle(beforeInstallInto: group)
            try control.markBad(group)
        }
        if !resumed { try store.setInstallJournal(journal) }

        // 5. The steps in stream order, the archive's end, then the members copied from the booted group.
        let context = StepContext(
            reader: bundle.reader, access: access, store: store, parts: control.parts, group: plan.switchedGroup ?? "",
            version: bundle.manifest.version.description)
        var staged: [GroupParts.Part] = []
        for step in plan.steps { try run(step, context, journal: &journal, staged: &staged) }
        try bundle.reader.finish()
        for copy in plan.copies where !journal.completed.contains(copy.slot.name) {
            try self.copy(copy, access: access)
            try context.complete(copy.slot, journal: &journal)
        }
        try hooks.run(.postInstall)

        // 6. Records, keyring, trusted time; then the switch (or the apps and settings, when no group switches).
        try record(plan, bundle, name: bundleName, staged: staged, store: store)
        try switchOver(
            plan, staged: staged, control: control, bundle: bundleName, version: bundle.manifest.version.description)
        return Result(plan, bundle, resumed: resumed, staged: staged)
    }

    // MARK: - The sequence's parts

    /// The booted group (it must be known: Ferry then writes nothing) and the other one, written.
    private func groups(_ control: BootControl) throws(FerryError) -> (booted: String, target: String) {
        guard let current = booted.bootname else {
            throw FerryError(
                code: .deviceBooted, message: "refusing to install: the booted group is unknown (\(booted.source))")
        }
        return (current, try control.bootname(for: "other"))
    }

    /// While the booted group is on trial, the other group is its only fallback.
    private func refuseOnTrial(_ current: String, force: Bool, store: StateStore) throws(FerryError) {
        if try store.bootState().pending == current, !force {
            throw FerryError(
                code: .onTrial,
                message:
                    "the booted group \(current) is still on trial (not confirmed): it is the only fallback; confirm it with 'ferry mark good' or use --force"
            )
        }
    }

    private func planner(booted current: String, target: String, store: StateStore) throws(FerryError) -> InstallPlanner
    {
        var resolver = SlotResolver()
        return InstallPlanner(
            configuration: configuration, booted: current, target: target, records: try store.slotRecords(),
            capacity: { (slot) throws(FerryError) in
                guard case .emmcBoot = slot.update else {
                    return try resolver.resolve(slot, configuration: configuration).byteCount
                }
                // An eMMC's boot partitions: the smaller one bounds a bootloader.
                let area = try EMMCBootArea.open(try SlotAccess.emmcPath(slot, configuration), forWriting: false)
                defer { area.close() }
                return area.capacity
            })
    }

    /// Every check that needs no write: each slot to write opened exclusively (booted, mounted,
    /// held, missing: refused), and each delta's source ranges compared with the signed manifest,
    /// so that a device whose booted slot differs writes nothing at all.
    private func checkBeforeWriting(_ plan: InstallPlan, access: SlotAccess, journal: InstallJournal?)
        throws(FerryError)
    {
        for slot in plan.slotsToOpen { try access.checkCanOpenExclusively(slot) }
        for (_, slot) in plan.bootloaderSteps {
            try checkBootloader(
                slot, access: access, inProgress: journal?.bootloaderPhases[slot.name] != nil,
                store: StateStore(directory: configuration.stateDirectory))
        }
        for step in plan.steps {
            guard case .applyDelta(_, let delta, _, let source) = step else { continue }
            progress(ProgressEvent(stage: .verify, slot: source.name, bytesDone: 0, bytesTotal: delta.sourceSize))
            let device = try access.openForReading(source)
            defer { try? device.close() }
            try DeltaApplier.verifySource(
                delta.sourceChecks, of: device, named: "booted slot '\(source.name)'", sourceSHA256: delta.sourceSHA256,
                sourceSize: delta.sourceSize)
        }
    }

    /// The journal of an interrupted install of this very bundle into this group, if any (read only).
    private func pendingJournal(_ bundle: VerifiedBundle, target: String, store: StateStore) throws(FerryError)
        -> InstallJournal?
    {
        let manifestHash = SHA256Hasher.hash(bundle.reader.manifestBytes).hex
        return store.installJournal().flatMap { $0.manifestSHA256 == manifestHash && $0.target == target ? $0 : nil }
    }

    /// Continues an interrupted install of this very bundle into this group, or starts fresh; a
    /// journal of another bundle or group is stale and dropped, never an obstacle.
    private func continuedJournal(
        manifestBytes: [UInt8], target: String, bundle: String, store: StateStore
    ) throws(FerryError) -> (InstallJournal, resumed: Bool) {
        let manifestHash = SHA256Hasher.hash(manifestBytes).hex
        if let previous = store.installJournal() {
            if previous.manifestSHA256 == manifestHash && previous.target == target {
                logger.info("Resuming an interrupted install", metadata: ["journal.completed": "\(previous.completed)"])
                return (previous, true)
            }
            logger.info("Dropping a stale install journal", metadata: ["journal.bundle": "\(previous.bundle)"])
            try store.removeInstallJournal()
        }
        return (InstallJournal(manifestSHA256: manifestHash, target: target, bundle: bundle), false)
    }

    /// Runs one step: stages an app or a settings document, or writes a slot (skipped when the
    /// journal says it was written and read back before an interruption).
    private func run(
        _ step: InstallPlan.Step, _ context: StepContext, journal: inout InstallJournal, staged: inout [GroupParts.Part]
    ) throws(FerryError) {
        switch step {
        case .stageApp(let payload, let info):
            try stageApp(payload, info, into: context.parts.apps, reader: context.reader)
            staged.append(GroupParts.Part(kind: .app, name: info.name, version: info.version))
        case .stageSettings(let payload, let info):
            try stageSettings(payload, info, reader: context.reader, parts: context.parts, group: context.group)
            staged.append(
                GroupParts.Part(kind: .settings, name: info.name, format: info.format, mergePatch: info.mergePatch))
        case .writeImage(let payload, let slot), .writeSingleCopy(let payload, let slot),
            .applyDelta(let payload, _, let slot, _), .updateBootloader(let payload, _, let slot):
            if journal.completed.contains(slot.name) {
                // Written and read back before the interruption: read past it in the stream.
                try context.reader.readPayload(payload, resumeAt: payload.chunks.count) {
                    (_, _, _) throws(FerryError) in
                }
                return
            }
            do {
                if case .updateBootloader = step {
                    try updateBootloader(
                        payload, slot: slot, context: context, bundle: journal.bundle, version: context.version,
                        journal: &journal)
                } else if case .applyDelta(_, _, _, let source) = step {
                    try writeDelta(
                        payload, to: slot, from: source, reader: context.reader, access: context.access,
                        journal: &journal, store: context.store)
                } else {
                    try write(
                        payload, to: slot, reader: context.reader, access: context.access, journal: &journal,
                        store: context.store)
                }
            } catch  where error.code == .readBackMismatch {
                // The slot's content cannot be trusted: the next attempt starts from scratch.
                try? context.store.removeInstallJournal()
                throw error
            }
            try context.complete(slot, journal: &journal)
        }
    }

    /// The switch: the target group made primary in one atomic environment write; or, when no
    /// group switches (single-copy modules), the apps and settings activated now, all or none.
    private func switchOver(
        _ plan: InstallPlan, staged: [GroupParts.Part], control: BootControl, bundle: String, version: String
    ) throws(FerryError) {
        progress(ProgressEvent(stage: .switchGroup, slot: nil, bytesDone: 0, bytesTotal: 0))
        if let group = plan.switchedGroup {
            try control.markActive(group)
        } else if !staged.isEmpty {
            try control.parts.activateInstall(staged, bundle: bundle, version: version)
        }
        progress(ProgressEvent(stage: .done, slot: nil, bytesDone: 0, bytesTotal: 0))
    }

    /// Records what each written slot holds (and, with a group switch, the pending security
    /// version and the staged apps and settings), drops the journal, adopts the bundle's keyring
    /// and records the trusted time.
    private func record(
        _ plan: InstallPlan, _ verified: VerifiedBundle, name bundle: String, staged: [GroupParts.Part],
        store: StateStore
    ) throws(FerryError) {
        let manifest = verified.manifest
        let now = WallClock.iso8601()
        for step in plan.steps {
            // (A bootloader step records its slot itself, as soon as it is selected.)
            guard let slot = step.slot, slot.update == nil else { continue }
            try store.setSlotRecord(
                InstalledSlotRecord(
                    sha256: step.payload.imageSHA256.hex, size: step.payload.imageSize,
                    version: manifest.version.description, source: bundle,
                    installedAt: now), for: slot.name)
        }
        for copy in plan.copies {
            var record = copy.record
            record.source = "copied from \(copy.source.name)"
            record.installedAt = now
            try store.setSlotRecord(record, for: copy.slot.name)
        }
        if let group = plan.switchedGroup {
            try store.setPendingSecurityVersion(manifest.securityVersion, for: group)
            if !staged.isEmpty {
                try store.setGroupParts(
                    GroupParts(group: group, bundle: bundle, version: manifest.version.description, parts: staged))
            }
        }
        try store.removeInstallJournal()
        if let keyring = verified.keyring, let update = manifest.keyring {
            try store.adoptKeyring(keyring, denyList: update.denyList, from: bundle)
        }
        try store.recordTrustedTime(verified.trustedTime)
    }

    /// A bundle whose manifest and signatures were verified against the device's policy; its
    /// payloads are read (and each checked) from `reader` as the steps run.
    struct VerifiedBundle {
        let reader: BundleReader
        let manifest: Manifest
        /// The keyring the bundle carries for rotation, verified.
        let keyring: [UInt8]?
        let trustedTime: Int64
    }

    private func verify(
        _ source: any ByteSource, allowDowngrade: Bool, indexed: UpdateIndex.Entry?
    ) throws(FerryError) -> VerifiedBundle {
        let policy = try DeviceTrust.policy(
            configuration: configuration, booted: booted, allowDowngrade: allowDowngrade)
        let reader = BundleReader(source: source)
        let (manifest, signers, keyring) = try reader.verify(
            policy: policy, allowDowngrade: allowDowngrade, indexed: indexed)
        try DeviceTrust.unlock(reader, configuration: configuration)
        logger.info(
            "Bundle verified",
            metadata: ["bundle.version": "\(manifest.version)", "bundle.signers": "\(signers.count)"])
        return VerifiedBundle(reader: reader, manifest: manifest, keyring: keyring, trustedTime: policy.trustedTime)
    }
}

extension Installer.Result {
    /// What an install of `bundle` by `plan` did.
    init(_ plan: InstallPlan, _ bundle: Installer.VerifiedBundle, resumed: Bool, staged: [GroupParts.Part]) {
        self.init(
            resumed: resumed, target: plan.switchedGroup ?? "", version: bundle.manifest.version.description,
            slots: plan.writtenSlots.map(\.name), copied: plan.copies.map(\.slot.name), apps: staged.map(\.summary),
            adoptedKeyring: bundle.keyring != nil,
            bootloaders: plan.bootloaderSteps.map { "\($0.1.name) (\($0.1.update?.name ?? ""))" })
    }
}

extension Installer {
    /// A download that broke off or gave up during an install says how the next run goes on:
    /// when the install journal exists, what was written is kept and the same command continues
    /// from its last checkpoint.
    public static func explainingResume(_ error: FerryError, stateDirectory: String) -> FerryError {
        let transport: Set<FerryError.Code> = [
            .network, .timeout, .tooSlow, .contentChanged, .httpStatus, .tlsHandshake,
        ]
        guard transport.contains(error.code), StateStore(directory: stateDirectory).installJournal() != nil else {
            return error
        }
        var explained = error
        explained.message +=
            "; the install journal keeps what was written: run the same command again to continue from its last checkpoint"
        return explained
    }
}

/// What the steps of one install share.
struct StepContext {
    let reader: BundleReader
    let access: SlotAccess
    let store: StateStore
    let parts: GroupPartsControl
    /// The group the bundle's apps and settings follow ("": none switches, they are activated at once).
    let group: String
    /// The bundle's version (for slot records).
    let version: String

    /// Notes in the journal that `slot` is written and read back (a resumed install skips it).
    func complete(_ slot: SlotConfiguration, journal: inout InstallJournal) throws(FerryError) {
        journal.completed.append(slot.name)
        try store.setInstallJournal(journal)
    }
}
