import FerryBootloader
import FerrySystem
import Logging

/// Boot control for a configured device: which group boots, marking groups good, bad or active,
/// and the early-boot check that notices a fallback and confirms the booted group.
public struct BootControl {
    public let configuration: SystemConfiguration
    public let chooser: any BootChooser
    public let booted: BootedGroup
    public let store: StateStore
    public let logger: Logger
    /// The apps and settings of mixed bundles, which follow their group.
    public var parts: GroupPartsControl { GroupPartsControl(configuration: configuration, logger: logger) }

    public init(configuration: SystemConfiguration, booted: BootedGroup, logger: Logger) throws(FerryError) {
        self.configuration = configuration
        self.chooser = try Self.makeChooser(configuration.bootloader, bootnames: configuration.groups.map(\.bootname))
        self.booted = booted
        self.store = StateStore(directory: configuration.stateDirectory)
        self.logger = logger
    }

    /// The configured boot environment (nil for the custom backend, which has none Ferry can read).
    public static func makeEnvironment(_ bootloader: BootloaderConfiguration) throws(FerryError) -> (
        any BootEnvironment
    )? {
        switch bootloader.kind {
        case .uboot:
            if let fwEnvConfig = bootloader.fwEnvConfig {
                return try UBootEnvironment(
                    fwEnvConfig: fwEnvConfig, byteOrder: bootloader.byteOrder, flagScheme: bootloader.flagScheme,
                    allowSingleRawCopy: bootloader.allowSingleRawCopy)
            }
            return UBootEnvironment(
                locations: bootloader.environment, name: "U-Boot environment in \(bootloader.environment[0].device)",
                byteOrder: bootloader.byteOrder, flagScheme: bootloader.flagScheme,
                allowSingleRawCopy: bootloader.allowSingleRawCopy)
        case .grub:
            return GRUBEnvironment(path: bootloader.grubenv!)
        case .custom:
            return nil
        }
    }

    static func makeChooser(_ bootloader: BootloaderConfiguration, bootnames: [String]) throws(FerryError)
        -> any BootChooser
    {
        switch bootloader.kind {
        case .uboot:
            return UBootBootChooser(
                environment: try makeEnvironment(bootloader)!, bootnames: bootnames, tries: bootloader.tries)
        case .grub:
            return GRUBBootChooser(environment: try makeEnvironment(bootloader)!, bootnames: bootnames)
        case .custom:
            return CustomBootChooser(command: bootloader.command!, bootnames: bootnames)
        }
    }

    /// The bootname a command-line target names: `booted`, `other`, a bootname, or a slot name.
    /// - Throws: `.unknownSlot`, or `.deviceBooted` when `booted`/`other` is asked while the booted group is unknown.
    public func bootname(for target: String) throws(FerryError) -> String {
        switch target {
        case "booted", "other":
            guard let current = booted.bootname else {
                throw FerryError(
                    code: .deviceBooted,
                    message: "'\(target)' needs the booted group, which is unknown (\(booted.source))")
            }
            if target == "booted" { return current }
            let others = configuration.groups.map(\.bootname).filter { $0 != current }
            guard others.count == 1 else {
                throw FerryError(
                    code: .unknownSlot,
                    message:
                        "'other' is ambiguous with \(others.count) other groups: name one of \(others.joined(separator: ", "))"
                )
            }
            return others[0]
        default:
            if configuration.group(target) != nil { return target }
            if let slot = configuration.slot(named: target) { return slot.bootname }
            throw FerryError(
                code: .unknownSlot,
                message:
                    "no slot group or slot '\(target)' (groups: \(configuration.groups.map(\.bootname).joined(separator: ", ")))"
            )
        }
    }

    /// Marks a whole group good: bootable, boot counter reset, recorded as confirmed.
    /// The apps and settings of a mixed bundle installed into it are activated first (a failing
    /// health check switches them back and the group is not confirmed).
    public func markGood(_ bootname: String) throws(FerryError) {
        try parts.confirm(bootname)
        try chooser.setState(good: true, for: bootname)
        var state = try store.bootState()
        if state.pending == bootname { state.pending = nil }
        state.confirmedAt[bootname] = WallClock.iso8601()
        try store.setBootState(state)
        // Confirming a group raises the security floor to the bundle installed in it.
        try store.confirmSecurityVersion(of: bootname)
        logger.info("Marked group good", metadata: ["group.bootname": "\(bootname)"])
    }

    /// Marks a whole group bad: the bootloader will not boot it until it is made active again.
    /// Apps and settings of a mixed bundle installed into it are dropped or switched back.
    public func markBad(_ bootname: String) throws(FerryError) {
        try chooser.setState(good: false, for: bootname)
        var state = try store.bootState()
        if state.pending == bootname { state.pending = nil }
        state.markedBadAt[bootname] = WallClock.iso8601()
        try store.setBootState(state)
        try parts.markedBad(bootname)
        logger.info("Marked group bad", metadata: ["group.bootname": "\(bootname)"])
    }

    /// Makes a whole group primary with a fresh count of tries; it stays on trial until confirmed.
    public func markActive(_ bootname: String) throws(FerryError) {
        // Record the intent first: if the switch below is cut, boot-check sees a pending group
        // that did not boot and simply clears it; the reverse order could lose a fallback.
        var state = try store.bootState()
        state.primary = bootname
        state.pending = bootname == booted.bootname && state.pending == nil ? nil : bootname
        state.pendingBootID = store.currentBootID(sandbox: configuration.sandbox)
        try store.setBootState(state)
        try chooser.setPrimary(bootname)
        // Apps and settings of a mixed bundle installed into another group go back (after the
        // switch: a cut in between is finished by boot-check confirming this group).
        try parts.madeActive(bootname)
        logger.info("Marked group active", metadata: ["group.bootname": "\(bootname)"])
    }

    /// What `boot-check` found and did.
    public struct BootCheckResult: Sendable, Equatable {
        public var booted: String
        /// The group the bootloader fell back from, when it did on this boot.
        public var rolledBackFrom: String?
        /// nil when no health check is configured.
        public var healthCheckPassed: Bool?
        public var confirmed: Bool
    }

    /// Runs once early at every boot: notices a fallback (the booted group is not the pending one
    /// Ferry made primary), records it and marks the failed group bad; runs the health check;
    /// confirms the booted group when configured and healthy.
    /// - Throws: `.deviceBooted` when the booted group is unknown; boot environment and state errors.
    public func bootCheck(confirm: Bool) throws(FerryError) -> BootCheckResult {
        guard let current = booted.bootname else {
            throw FerryError(code: .deviceBooted, message: "boot-check: the booted group is unknown (\(booted.source))")
        }
        var result = BootCheckResult(booted: current, rolledBackFrom: nil, healthCheckPassed: nil, confirmed: false)
        // An app or settings install cut before its health checks passed (power loss) goes back.
        try parts.recoverInterruptedInstall()
        var state = try store.bootState()
        let bootID = store.currentBootID(sandbox: configuration.sandbox)
        if let pending = state.pending, pending != current, bootID != nil, state.pendingBootID == bootID {
            // Made primary during this very boot (boot-check run again before the reboot): no
            // boot has tried it yet, so this is no fallback.
            logger.info("The pending group has not been booted yet", metadata: ["group.pending": "\(pending)"])
        } else if let pending = state.pending, pending != current {
            // The bootloader did not boot the group Ferry made primary: it ran out of tries.
            logger.warning("Boot fell back", metadata: ["group.failed": "\(pending)", "group.booted": "\(current)"])
            state.rolledBackFrom = pending
            state.rolledBackTo = current
            state.rolledBackAt = WallClock.iso8601()
            state.pending = nil
            try store.setBootState(state)
            try markBad(pending)
            result.rolledBackFrom = pending
        }
        if let healthCheck = configuration.hooks.healthCheck {
            let check = ExternalCommand(
                role: "health check", [healthCheck],
                environment: ["FERRY_BOOTED": current, "FERRY_CONFIG": configuration.path],
                timeoutSeconds: configuration.hooks.timeoutSeconds)
            let failure = check.failure(check.run())
            result.healthCheckPassed = failure == nil
            if let failure {
                throw FerryError(code: .healthCheckFailed, message: "\(failure); group \(current) is not confirmed")
            }
        }
        if confirm && configuration.bootloader.confirmInBootCheck {
            try markGood(current)
            result.confirmed = true
        }
        return result
    }
}
