import FerryBootloader
import FerryBundle
import FerryCrypto
import FerrySystem

/// The bootloader step: a bootloader the device has once, updated with its slot's strategy
/// (`BootloaderUpdater`, docs/bootloader-updates.md). The image is read whole (a bootloader fits
/// in memory: its region bounds it), checked, written where nothing boots from it, synced, read
/// back, and selected with one atomic write; each phase is noted in the journal once durable.
extension Installer {
    /// The checks before anything is written: the boot disk opens (nothing mounted over a region),
    /// the regions overlap no partition, the selector selects one of them and is the one Ferry
    /// recorded (or one a cut of this very update explains).
    func checkBootloader(_ slot: SlotConfiguration, access: SlotAccess, inProgress: Bool, store: StateStore)
        throws(FerryError)
    {
        guard let strategy = slot.update else { throw FerryError(code: .internal, message: "no strategy") }
        let devices = try access.openBootloader(slot)
        defer { devices.close() }
        let updater = devices.updater(strategy, name: slot.name)
        try updater.checkLayout()
        let selection = try updater.selection(inProgress: inProgress)
        try Self.checkRecorded(selection, slot: slot, strategy: updater.strategy, store: store, inProgress: inProgress)
    }

    /// Refuses a selector that changed since Ferry recorded it (none recorded: the first update
    /// takes the disk as it finds it).
    static func checkRecorded(
        _ selection: BootloaderUpdater.Selection, slot: SlotConfiguration, strategy: BootloaderStrategy,
        store: StateStore, inProgress: Bool
    ) throws(FerryError) {
        let recorded = try store.slotRecords()[slot.name]?.selectors ?? []
        guard !inProgress, !recorded.isEmpty, !selection.selectorDigest.isEmpty else { return }
        guard recorded.contains(selection.selectorDigest) else {
            let what =
                switch strategy {
                case .gptSwitch: "GPT"
                case .emmcBoot: "EXT_CSD PARTITION_CONFIG"
                default: "MBR sector"
                }
            throw FerryError(
                code: .bootloaderForeign,
                message:
                    "bootloader slot '\(slot.name)' (\(strategy.name)): the \(what) changed since Ferry last wrote it (another tool rewrote it?): check the disk, then record it with 'ferry write-slot' or remove the slot's record"
            )
        }
    }

    func updateBootloader(
        _ payload: Manifest.Payload, slot: SlotConfiguration, context: StepContext, bundle: String, version: String,
        journal: inout InstallJournal
    ) throws(FerryError) {
        guard let strategy = slot.update else { throw FerryError(code: .internal, message: "no strategy") }
        progress(ProgressEvent(stage: .write, slot: slot.name, bytesDone: 0, bytesTotal: payload.size))
        var image: [UInt8] = []
        image.reserveCapacity(Int(payload.size))
        try context.reader.readPayload(payload) { (_, _, bytes) throws(FerryError) in image.append(contentsOf: bytes) }
        let devices = try context.access.openBootloader(slot)
        defer { devices.close() }
        let updater = devices.updater(strategy, name: slot.name, wrap: wrapDevice)
        let inProgress = journal.bootloaderPhases[slot.name] != nil
        let before = try updater.selection(inProgress: inProgress)
        let phases = try updater.phases(for: image, inProgress: inProgress)
        // The selector states this update may leave are recorded before it writes: a cut at any
        // point leaves a selector the next update recognises as Ferry's own.
        var record = try context.store.slotRecords()[slot.name] ?? InstalledSlotRecord()
        record.selectors = Array(Set(record.selectors + [before.selectorDigest] + phases.compactMap(\.selects)))
            .filter { !$0.isEmpty }.sorted()
        try context.store.setSlotRecord(record, for: slot.name)
        journal.bootloaderPhases[slot.name] = 0
        try context.store.setInstallJournal(journal)
        do {
            try updater.run(phases) { (index) throws(FerryError) in
                journal.bootloaderPhases[slot.name] = index + 1
                try context.store.setInstallJournal(journal)
                progress(
                    ProgressEvent(
                        stage: .write, slot: slot.name,
                        bytesDone: payload.size * Int64(index + 1) / Int64(phases.count),
                        bytesTotal: payload.size))
            }
        } catch  where error.code == .readBackMismatch {
            try? context.store.removeInstallJournal()
            throw error
        }
        let after = try updater.selection(inProgress: true)
        record = InstalledSlotRecord(
            sha256: payload.sha256.hex, size: payload.size, version: version, source: bundle,
            installedAt: WallClock.iso8601(), raw: record.raw)
        record.activeRegion = after.active
        record.selectors = after.selectorDigest.isEmpty ? [] : [after.selectorDigest]
        try context.store.setSlotRecord(record, for: slot.name)
    }
}
