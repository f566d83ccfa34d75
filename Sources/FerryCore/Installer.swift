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
    }

    /// Verifies and installs the bundle read from `source`.
    /// - Parameters:
    ///   - allowDowngrade: accept a version older than the booted one (never below the security floor).
    ///   - force: install even while the booted group is on trial (not yet confirmed).
    ///   - indexed: the update index entry that chose the bundle (`ferry update`): a bundle with
    ///     another manifest is refused before anything is written.
    /// - Throws: every bundle, policy, device and boot environment error, before or during writing.
    public func install(
        from source: any ByteSource, bundleName: String, allowDowngrade: Bool, force: Bool, indexed: UpdateIndex.Entry? = nil
    ) throws(FerryError) -> Result {
        let control = try BootControl(configuration: configuration, booted: booted, logger: logger)
        guard let current = booted.bootname else {
            throw FerryError(code: .deviceBooted, message: "refusing to install: the booted group is unknown (\(booted.source))")
        }
        let target = try control.bootname(for: "other")
        let store = StateStore(directory: configuration.stateDirectory)
        // An app or settings install cut before its health checks passed is switched back first.
        try control.parts.recoverInterruptedInstall()
        if try store.bootState().pending == current, !force {
            throw FerryError(
                code: .onTrial,
                message: "the booted group \(current) is still on trial (not confirmed): it is the only fallback; confirm it with 'ferry mark good' or use --force")
        }

        // 1. Verify signatures and policy; nothing is written before this passes.
        let policy = try DeviceTrust.policy(configuration: configuration, booted: booted, allowDowngrade: allowDowngrade)
        let reader = BundleReader(source: source)
        let (manifest, signers, keyring) = try reader.verify(policy: policy, allowDowngrade: allowDowngrade, indexed: indexed)
        logger.info("Bundle verified", metadata: ["bundle.version": "\(manifest.version)", "bundle.signers": "\(signers.count)"])
        // App and settings payloads alone need no group switch; beside slot images (a mixed
        // bundle) they are staged and follow the target group (GroupParts).
        let partPayloads = manifest.payloads.filter { $0.app != nil || $0.settings != nil }
        if partPayloads.count == manifest.payloads.count {
            return try installApps(manifest, reader: reader, keyring: keyring, bundleName: bundleName, trustedTime: policy.trustedTime)
        }
        let parts = control.parts
        try parts.checkCanStage(partPayloads)

        // 2. Plan: one slot of the target group per payload, large enough; the group complete.
        guard let group = configuration.group(target) else { throw FerryError(code: .internal, message: "no group \(target)") }
        var plan: [(Manifest.Payload, SlotConfiguration)] = []
        /// Single-copy module slots (no A/B), written in place where the configuration opts in.
        var singles: [(Manifest.Payload, SlotConfiguration)] = []
        /// The booted slot each delta payload reads, by target slot name.
        var deltaSources: [String: SlotConfiguration] = [:]
        var resolver = SlotResolver()
        for payload in manifest.payloads where payload.app == nil && payload.settings == nil {
            if let single = configuration.singleCopySlot(ofClass: payload.target) {
                guard payload.delta == nil else {
                    throw FerryError(
                        code: .notCompatible,
                        message: "payload '\(payload.member)' is a delta, but slot '\(single.name)' is single-copy: a delta cannot read the copy it overwrites")
                }
                let capacity = try resolver.resolve(single, configuration: configuration).byteCount
                guard payload.imageSize <= capacity else {
                    throw FerryError(
                        code: .deviceTooSmall, message: "payload '\(payload.member)' is \(payload.imageSize) bytes but slot '\(single.name)' holds \(capacity)")
                }
                singles.append((payload, single))
                continue
            }
            guard let slot = group.slot(ofClass: payload.target) else {
                throw FerryError(
                    code: .notCompatible, message: "the bundle has a payload for slot class '\(payload.target)', which this device does not have")
            }
            let resolved = try resolver.resolve(slot, configuration: configuration)
            guard payload.imageSize <= resolved.byteCount else {
                throw FerryError(
                    code: .deviceTooSmall,
                    message: "payload '\(payload.member)' is \(payload.imageSize) bytes but slot '\(slot.name)' holds \(resolved.byteCount)")
            }
            if payload.delta != nil {
                guard let source = configuration.group(current)?.slot(ofClass: payload.target) else {
                    throw FerryError(code: .notCompatible, message: "delta payload '\(payload.member)': the booted group \(current) has no '\(payload.target)' slot to read")
                }
                deltaSources[slot.name] = source
            }
            plan.append((payload, slot))
        }
        // Members of the group the bundle does not update (a module-only bundle, say) are made
        // consistent with the booted group: each gets the image its booted counterpart was
        // installed with, which the state records.
        let records = try store.slotRecords()
        var copies: [GroupCopy] = []
        // A bundle of single-copy modules alone switches no group.
        let switchesGroup = !plan.isEmpty
        for slot in group.slots where switchesGroup && !plan.contains(where: { $0.1.name == slot.name }) {
            guard let source = configuration.group(current)?.slot(ofClass: slot.slotClass) else {
                throw FerryError(
                    code: .bundleInvalid,
                    message: "the bundle has no payload for slot class '\(slot.slotClass)', and the booted group \(current) has no such slot to copy")
            }
            guard let record = records[source.name], let hex = record.sha256, let digest = SHA256Digest(hex: hex), let size = record.size else {
                throw FerryError(
                    code: .stateInvalid,
                    message: "the bundle has no payload for slot class '\(slot.slotClass)', and there is no record of the image in the booted slot '\(source.name)' to copy it from (install a bundle that carries it)")
            }
            let capacity = try resolver.resolve(slot, configuration: configuration).byteCount
            guard size <= capacity else {
                throw FerryError(code: .deviceTooSmall, message: "slot '\(source.name)' holds a \(size)-byte image but slot '\(slot.name)' only \(capacity) bytes")
            }
            copies.append(GroupCopy(slot: slot, source: source, record: record, sha256: digest, size: size))
        }

        let access = SlotAccess(configuration: configuration, booted: booted, mounts: try MountTable.current(), logger: logger)
        for (_, slot) in plan + singles { try access.checkCanOpenExclusively(slot) }
        for copy in copies { try access.checkCanOpenExclusively(copy.slot) }
        // A delta's source is the booted slot: every range it reads is checked against the signed
        // manifest now, so that a device whose booted slot differs writes nothing at all.
        for (payload, slot) in plan {
            guard let delta = payload.delta, let source = deltaSources[slot.name] else { continue }
            progress(ProgressEvent(stage: .verify, slot: source.name, bytesDone: 0, bytesTotal: delta.sourceSize))
            let device = try access.openForReading(source)
            defer { try? device.close() }
            try DeltaApplier.verifySource(
                delta.sourceChecks, of: device,
                named: "booted slot '\(source.name)'", sourceSHA256: delta.sourceSHA256, sourceSize: delta.sourceSize)
        }

        // 3. The pre-install hook may still refuse; nothing was written yet.
        let hooks = Hooks(configuration: configuration.hooks)
        var hookEnvironment = [
            "FERRY_BUNDLE": bundleName, "FERRY_VERSION": manifest.version.description, "FERRY_COMPATIBLE": manifest.compatible,
            "FERRY_BOOTED_GROUP": current, "FERRY_TARGET_GROUP": target, "FERRY_CONFIG": configuration.path,
            "FERRY_SLOTS": (plan + singles).map(\.1.name).joined(separator: " "), "FERRY_STAGE": "pre-install",
        ]
        try hooks.run("pre-install", configuration.hooks.preInstall, environment: hookEnvironment)

        // 4. Continue an interrupted install of this very bundle into this group, or start fresh;
        //    a journal of another bundle or group is stale and dropped, never an obstacle.
        let manifestHash = SHA256Hasher.hash(reader.manifestBytes).hex
        var journal = InstallJournal(manifestSHA256: manifestHash, target: target, bundle: bundleName)
        var resumed = false
        if let previous = store.installJournal() {
            if previous.manifestSHA256 == manifestHash && previous.target == target {
                journal = previous
                resumed = true
                logger.info("Resuming an interrupted install", metadata: ["journal.completed": "\(previous.completed)"])
            } else {
                logger.info("Dropping a stale install journal", metadata: ["journal.bundle": "\(previous.bundle)"])
                try store.removeInstallJournal()
            }
        }

        // 5. The target group will not boot until it is complete and verified. Apps and settings
        //    staged for it by an earlier bundle are dropped with it.
        if switchesGroup {
            try parts.settle(beforeInstallInto: target)
            try control.markBad(target)
        }
        if !resumed { try store.setInstallJournal(journal) }
        var staged: [GroupParts.Part] = []
        for payload in manifest.payloads {
            if let info = payload.app {
                try stageApp(payload, info, into: parts.apps, reader: reader)
                staged.append(GroupParts.Part(kind: .app, name: info.name, version: info.version))
                continue
            }
            if let info = payload.settings {
                var incoming: [UInt8] = []
                try reader.readPayload(payload) { (_, _, bytes) throws(FerryError) in incoming += bytes }
                try parts.stageSettings(info, incoming: incoming, group: switchesGroup ? target : "")
                staged.append(GroupParts.Part(kind: .settings, name: info.name, format: info.format, mergePatch: info.mergePatch))
                continue
            }
            guard let slot = (plan + singles).first(where: { $0.0.member == payload.member })?.1 else {
                throw FerryError(code: .internal, message: "payload '\(payload.member)' has no slot")
            }
            if journal.completed.contains(slot.name) {
                // Written and read back before the interruption: read past it in the stream.
                try reader.readPayload(payload, resumeAt: payload.chunks.count) { (_, _, _) throws(FerryError) in }
                continue
            }
            do {
                if let source = deltaSources[slot.name] {
                    try writeDelta(payload, to: slot, from: source, reader: reader, access: access, journal: &journal, store: store)
                } else {
                    try write(payload, to: slot, reader: reader, access: access, journal: &journal, store: store)
                }
            } catch where error.code == .readBackMismatch {
                // The slot's content cannot be trusted: the next attempt starts from scratch.
                try? store.removeInstallJournal()
                throw error
            }
            journal.completed.append(slot.name)
            try store.setInstallJournal(journal)
        }
        try reader.finish()
        for copy in copies where !journal.completed.contains(copy.slot.name) {
            try self.copy(copy, access: access)
            journal.completed.append(copy.slot.name)
            try store.setInstallJournal(journal)
        }
        // A failing post-install hook blocks the switch: the group stays bad.
        hookEnvironment["FERRY_STAGE"] = "post-install"
        try hooks.run("post-install", configuration.hooks.postInstall, environment: hookEnvironment)

        // 5. Record what is installed, adopt a new keyring, then switch.
        let now = WallClock.iso8601()
        for (payload, slot) in plan + singles {
            try store.setSlotRecord(
                InstalledSlotRecord(
                    sha256: payload.imageSHA256.hex, size: payload.imageSize, version: manifest.version.description, source: bundleName,
                    installedAt: now), for: slot.name)
        }
        for copy in copies {
            var record = copy.record
            record.source = "copied from \(copy.source.name)"
            record.installedAt = now
            try store.setSlotRecord(record, for: copy.slot.name)
        }
        if switchesGroup {
            try store.setPendingSecurityVersion(manifest.securityVersion, for: target)
            if !staged.isEmpty {
                try store.setGroupParts(GroupParts(group: target, bundle: bundleName, version: manifest.version.description, parts: staged))
            }
        }
        try store.removeInstallJournal()
        if let keyring, let update = manifest.keyring {
            try store.adoptKeyring(keyring, denyList: update.denyList, from: bundleName)
        }
        try store.recordTrustedTime(policy.trustedTime)
        progress(ProgressEvent(stage: .switchGroup, slot: nil, bytesDone: 0, bytesTotal: 0))
        if switchesGroup {
            try control.markActive(target)
        } else if !staged.isEmpty {
            // No group to follow: apps and settings are activated now, all or none.
            try parts.activateInstall(staged, bundle: bundleName, version: manifest.version.description)
        }
        progress(ProgressEvent(stage: .done, slot: nil, bytesDone: 0, bytesTotal: 0))
        return Result(
            resumed: resumed, target: switchesGroup ? target : "", version: manifest.version.description, slots: (plan + singles).map(\.1.name),
            copied: copies.map(\.slot.name), apps: staged.map { $0.kind == .app ? "\($0.name) \($0.version ?? "")" : "settings \($0.name)" },
            adoptedKeyring: keyring != nil)
    }

    private func write(
        _ payload: Manifest.Payload, to slot: SlotConfiguration, reader: BundleReader, access: SlotAccess,
        journal: inout InstallJournal, store: StateStore
    ) throws(FerryError) {
        let open = try access.openForWriting(slot)
        defer { try? open.close() }
        // Whole chunks land in aligned buffers: they need not pass through the page cache.
        open.device.enableDirectWrites()
        let device = wrapDevice(open.device)
        let resumeAt = min(journal.chunksDone[slot.name] ?? 0, payload.chunks.count)
        progress(
            ProgressEvent(stage: .write, slot: slot.name, bytesDone: Int64(resumeAt) * payload.chunkSize, bytesTotal: payload.size))
        var sinceCheckpoint: Int64 = 0
        // Every chunk of the slot is read back and compared with its signed decoded hash (as strong
        // as the whole-payload hash), from the device, not the page cache. Regions are read back
        // once a checkpoint made them durable, on a thread of their own, while later chunks are
        // decoded and written; chunks written before an interruption are durable already.
        let readBack = ReadBackQueue(
            device: device, direct: open.device.directReader().map(wrapDevice),
            dropCaches: { (range) throws(FerryError) in try open.device.dropCaches(range) }, payload: payload, slot: slot.name,
            path: open.devicePath)
        // (Runs before the device is closed: no read may outlive its descriptor.)
        defer { readBack.cancel() }
        readBack.verify(upTo: resumeAt)
        // Zero chunks first: the signed manifest says which chunks decode to zeros, so their ranges
        // are zeroed by the device and synced before the first chunk is written (when it is handed
        // out, so the decoders are busy meanwhile), and read back while the rest decodes. Reading
        // back zeroed ranges is slow on some devices, loop devices over sparse files among them:
        // left for the end, it was the end's longest wait.
        let zeroFirst = Self.zeroChunksToZeroFirst(payload, from: resumeAt)
        var zeroedFirst = zeroFirst.isEmpty
        let zeroedAlready = Set(zeroFirst)
        // Each chunk arrives hash-checked (compressed and decoded) before it is written.
        try reader.readPayload(payload, resumeAt: resumeAt, checkWholeHash: false) { (index, offset, bytes) throws(FerryError) in
            if !zeroedFirst {
                if !journal.zeroed.contains(slot.name) {
                    for span in Self.spans(of: zeroFirst, in: payload) { try device.zeroOut(span) }
                    try device.synchronize()
                    journal.zeroed.append(slot.name)
                    try store.setInstallJournal(journal)
                }
                readBack.verify(zeroFirst)
                zeroedFirst = true
            }
            if !zeroedAlready.contains(index) {
                try ImageWriter.write(bytes, at: offset, to: device)
                sinceCheckpoint += Int64(bytes.count)
            }
            if sinceCheckpoint >= checkpointBytes {
                // Checkpoint: the slot first, then the journal, so it never claims more than is durable.
                try device.synchronize()
                journal.chunksDone[slot.name] = index + 1
                try store.setInstallJournal(journal)
                sinceCheckpoint = 0
                if let failure = readBack.failure { throw failure }
                readBack.verify(upTo: index + 1)
            }
            progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: offset + Int64(bytes.count), bytesTotal: payload.size))
        }
        try device.synchronize()
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: readBack.verifiedBytes, bytesTotal: payload.size))
        readBack.verify(upTo: payload.chunks.count)
        try readBack.finish()
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: payload.size, bytesTotal: payload.size))
    }
}

extension Installer {
    /// A download that broke off or gave up during an install says how the next run goes on:
    /// when the install journal exists, what was written is kept and the same command continues
    /// from its last checkpoint.
    public static func explainingResume(_ error: FerryError, stateDirectory: String) -> FerryError {
        let transport: Set<FerryError.Code> = [.network, .timeout, .tooSlow, .contentChanged, .httpStatus, .tlsHandshake]
        guard transport.contains(error.code), StateStore(directory: stateDirectory).installJournal() != nil else { return error }
        var explained = error
        explained.message += "; the install journal keeps what was written: run the same command again to continue from its last checkpoint"
        return explained
    }

    /// The zero chunks at or after `first` whose range starts and ends on a 4 KiB boundary (what
    /// ``ImageWriter`` lets the device zero; in practice every zero chunk but a short last one).
    static func zeroChunksToZeroFirst(_ payload: Manifest.Payload, from first: Int) -> [Int] {
        payload.zeroChunks.filter { index in
            index >= first && (Int64(index) * payload.chunkSize) % 4096 == 0 && payload.decodedSize(ofChunk: index) % 4096 == 0
        }
    }

    /// The byte ranges of `chunks` in the slot, adjacent ones merged.
    static func spans(of chunks: [Int], in payload: Manifest.Payload) -> [Range<Int64>] {
        var spans: [Range<Int64>] = []
        for index in chunks {
            let start = Int64(index) * payload.chunkSize
            let next = start..<(start + Int64(payload.decodedSize(ofChunk: index)))
            if let last = spans.last, last.upperBound == next.lowerBound {
                spans[spans.count - 1] = last.lowerBound..<next.upperBound
            } else {
                spans.append(next)
            }
        }
        return spans
    }

    /// An app-only bundle: every app is written into the app store (staged, synced, renamed in),
    /// then each is activated and health-checked; a failing check switches that app back.
    /// No slot is written and no group switches.
    func installApps(
        _ manifest: Manifest, reader: BundleReader, keyring: [UInt8]?, bundleName: String, trustedTime: Int64
    ) throws(FerryError) -> Result {
        let control = GroupPartsControl(configuration: configuration, logger: logger)
        try control.checkCanStage(manifest.payloads)
        // Settings are read and checked (well-formed, schema, merge patch, validation command)
        // before anything is replaced; apps are written as complete, inactive versions.
        var parts: [GroupParts.Part] = []
        do {
            for payload in manifest.payloads {
                if let info = payload.settings {
                    var incoming: [UInt8] = []
                    try reader.readPayload(payload) { (_, _, bytes) throws(FerryError) in incoming += bytes }
                    try control.stageSettings(info, incoming: incoming, group: "")
                    parts.append(GroupParts.Part(kind: .settings, name: info.name, format: info.format, mergePatch: info.mergePatch))
                } else if let info = payload.app {
                    try stageApp(payload, info, into: control.apps, reader: reader)
                    parts.append(GroupParts.Part(kind: .app, name: info.name, version: info.version))
                }
            }
            try reader.finish()
        } catch {
            try? AppStore.removeTree(control.stagingDirectory(""))
            throw error
        }
        let store = StateStore(directory: configuration.stateDirectory)
        if let keyring, let update = manifest.keyring { try store.adoptKeyring(keyring, denyList: update.denyList, from: bundleName) }
        try store.recordTrustedTime(trustedTime)
        progress(ProgressEvent(stage: .switchGroup, slot: nil, bytesDone: 0, bytesTotal: 0))
        try control.activateInstall(parts, bundle: bundleName, version: manifest.version.description)
        progress(ProgressEvent(stage: .done, slot: nil, bytesDone: 0, bytesTotal: 0))
        return Result(
            resumed: false, target: "", version: manifest.version.description, slots: [], copied: [],
            apps: manifest.payloads.compactMap { payload in
                payload.app.map { "\($0.name) \($0.version)" } ?? payload.settings.map { "settings \($0.name)" }
            }, adoptedKeyring: keyring != nil)
    }
}

extension Installer {
    /// Writes an app payload into the app store as a complete, inactive version.
    func stageApp(_ payload: Manifest.Payload, _ info: Manifest.AppInfo, into apps: AppStore, reader: BundleReader) throws(FerryError) {
        progress(ProgressEvent(stage: .write, slot: info.name, bytesDone: 0, bytesTotal: payload.size))
        if info.unpack {
            let stream = try PayloadStream(reader: reader, payload: payload)
            try apps.stageArchive(name: info.name, version: info.version, archive: stream)
            // Whatever follows the archive's end (padding) is read and checked too.
            try stream.skip(payload.size - stream.position)
            progress(ProgressEvent(stage: .write, slot: info.name, bytesDone: payload.size, bytesTotal: payload.size))
            return
        }
        try apps.stage(name: info.name, version: info.version, file: info.file) { (sink) throws(FerryError) in
            try reader.readPayload(payload) { (_, offset, bytes) throws(FerryError) in
                try sink.write(bytes)
                progress(ProgressEvent(stage: .write, slot: info.name, bytesDone: offset + Int64(bytes.count), bytesTotal: payload.size))
            }
        }
    }
}

/// A member of the target group the bundle does not carry, and the booted member whose recorded
/// image it must hold.
struct GroupCopy {
    var slot: SlotConfiguration
    var source: SlotConfiguration
    var record: InstalledSlotRecord
    var sha256: SHA256Digest
    var size: Int64
}

extension Installer {
    /// Gives `copy.slot` the image recorded for the booted member: nothing to do when it already
    /// holds it (read and hashed); otherwise copied from the booted member (read only; a member
    /// mounted read-write is refused) and checked against the recorded SHA-256 as it is read,
    /// then synced and read back.
    func copy(_ copy: GroupCopy, access: SlotAccess) throws(FerryError) {
        let open = try access.openForWriting(copy.slot)
        defer { try? open.close() }
        let device = wrapDevice(open.device)
        progress(ProgressEvent(stage: .verify, slot: copy.slot.name, bytesDone: 0, bytesTotal: copy.size))
        if try SHA256Hasher.hash(device, byteCount: copy.size) == copy.sha256 {
            logger.info("Slot already holds the booted member's image", metadata: ["slot.name": "\(copy.slot.name)"])
            return
        }
        let source = try access.openForReading(copy.source)
        defer { try? source.close() }
        let hasher = SHA256Hasher()
        let piece = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while offset < copy.size {
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(Int64(piece), copy.size - offset))])
            try source.read(into: slice, at: offset)
            hasher.update(UnsafeRawBufferPointer(slice))
            try ImageWriter.write(UnsafeRawBufferPointer(slice), at: offset, to: device)
            offset += Int64(slice.count)
            progress(ProgressEvent(stage: .write, slot: copy.slot.name, bytesDone: offset, bytesTotal: copy.size))
        }
        guard hasher.finalize() == copy.sha256 else {
            throw FerryError(
                code: .sourceMismatch,
                message: "booted slot '\(copy.source.name)' no longer holds the image recorded for it (sha256 \(copy.sha256)): cannot copy it into '\(copy.slot.name)'")
        }
        try device.synchronize()
        try open.device.dropCaches()
        guard try SHA256Hasher.hash(device, byteCount: copy.size) == copy.sha256 else {
            throw FerryError(code: .readBackMismatch, message: "slot '\(copy.slot.name)' (\(open.devicePath)) reads back differently from what was copied: the device is failing")
        }
        progress(ProgressEvent(stage: .readBack, slot: copy.slot.name, bytesDone: copy.size, bytesTotal: copy.size))
    }

    /// Writes a delta payload: applies it to the booted slot `source` (read only, every range
    /// checked before use) into `slot`, operation by operation, each checked before it is
    /// written; checkpoints at operation boundaries; then reads the slot back and compares it
    /// with the target image's SHA-256.
    private func writeDelta(
        _ payload: Manifest.Payload, to slot: SlotConfiguration, from source: SlotConfiguration, reader: BundleReader,
        access: SlotAccess, journal: inout InstallJournal, store: StateStore
    ) throws(FerryError) {
        guard let info = payload.delta else { throw FerryError(code: .internal, message: "payload '\(payload.member)' is not a delta") }
        let open = try access.openForWriting(slot)
        defer { try? open.close() }
        let device = wrapDevice(open.device)
        let sourceDevice = try access.openForReading(source)
        defer { try? sourceDevice.close() }
        let stream = try PayloadStream(reader: reader, payload: payload)
        let applier = try DeltaApplier(delta: stream, source: sourceDevice, sourceName: "booted slot '\(source.name)'")
        // The stream must be the delta the signed manifest describes (its source checks were
        // verified against the booted slot before anything was written).
        guard applier.header.sourceSHA256 == info.sourceSHA256, applier.header.sourceSize == info.sourceSize,
            applier.header.targetSHA256 == info.targetSHA256, applier.header.targetSize == info.targetSize,
            applier.sourceChecks == info.sourceChecks
        else {
            throw FerryError(code: .bundleInvalid, message: "payload '\(payload.member)' is not the delta its manifest entry describes")
        }
        var start = applier.firstOperation
        if let saved = journal.deltaPositions[slot.name], saved.deltaOffset > start.deltaOffset, saved.deltaOffset <= payload.size {
            try stream.skip(saved.deltaOffset - start.deltaOffset)
            start = saved
        }
        progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: start.targetOffset, bytesTotal: info.targetSize))
        var sinceCheckpoint: Int64 = 0
        try applier.apply(from: stream, start: start, verifyWholeTarget: false) { (offset, bytes, next) throws(FerryError) in
            try ImageWriter.write(bytes, at: offset, to: device)
            sinceCheckpoint += Int64(bytes.count)
            if sinceCheckpoint >= checkpointBytes {
                // Checkpoint: the slot first, then the journal, so it never claims more than is durable.
                try device.synchronize()
                journal.deltaPositions[slot.name] = next
                try store.setInstallJournal(journal)
                sinceCheckpoint = 0
            }
            progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: next.targetOffset, bytesTotal: info.targetSize))
        }
        guard stream.isAtEnd else {
            throw FerryError(code: .bundleInvalid, message: "payload '\(payload.member)' has data after the delta's last operation")
        }
        try device.synchronize()
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: 0, bytesTotal: info.targetSize))
        try open.device.dropCaches()
        guard try SHA256Hasher.hash(device, byteCount: info.targetSize) == info.targetSHA256 else {
            throw FerryError(
                code: .readBackMismatch,
                message: "slot '\(slot.name)' (\(open.devicePath)) reads back differently from the delta's target image: the device is failing")
        }
        progress(ProgressEvent(stage: .readBack, slot: slot.name, bytesDone: info.targetSize, bytesTotal: info.targetSize))
    }
}

extension StateStore {
    /// The security version of the bundle installed into a group, raised into the floor when the
    /// group is confirmed.
    func setPendingSecurityVersion(_ version: Int64, for bootname: String) throws(FerryError) {
        var record = try trustRecord()
        var pending = record["pendingSecurityVersion"]?.objectValue ?? [:]
        pending[bootname] = .number(Double(version))
        record["pendingSecurityVersion"] = .object(pending)
        try setTrustRecord(record)
    }

    /// Raises the floor to the security version installed in `bootname`, if one is pending.
    func confirmSecurityVersion(of bootname: String) throws(FerryError) {
        let record = try trustRecord()
        guard let version = record["pendingSecurityVersion"]?.objectValue?[bootname]?.int64Value else { return }
        try raiseSecurityFloor(to: version)
    }
}
