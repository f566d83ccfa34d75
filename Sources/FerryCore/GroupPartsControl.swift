import FerryBundle
import FerryJSON
import FerrySystem
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Stages, activates and switches back the parts of mixed bundles (see `GroupParts`).
public struct GroupPartsControl {
    public let configuration: SystemConfiguration
    public let store: StateStore
    public let logger: Logger

    public init(configuration: SystemConfiguration, logger: Logger) {
        self.configuration = configuration
        self.store = StateStore(directory: configuration.stateDirectory)
        self.logger = logger
    }

    var apps: AppStore {
        AppStore(directory: configuration.appStore ?? "", keep: configuration.apps.keep, logger: logger)
    }
    var settings: SettingsStore {
        SettingsStore(directory: configuration.settingsStore ?? "", configuration: configuration.settings)
    }

    /// Where the settings of a group's parts wait: `<settingsStore>/.group-<bootname>`; those of
    /// an install without a group (empty `group`): `<settingsStore>/.install`.
    func stagingDirectory(_ group: String) -> String {
        "\(configuration.settingsStore ?? "")/" + (group.isEmpty ? ".install" : ".group-\(group)")
    }
    func recordFile(_ record: GroupParts) -> StateFile { record.group.isEmpty ? .installParts : .groupParts }

    /// Checks that the device can take these parts (stores configured, plain names), before anything is written.
    public func checkCanStage(_ payloads: [Manifest.Payload]) throws(FerryError) {
        for payload in payloads {
            if let info = payload.app {
                guard configuration.appStore != nil else {
                    throw FerryError(
                        code: .configurationInvalid,
                        message: "the bundle carries apps, but \(configuration.path) names no appStore")
                }
                try AppStore.checkName(info.name, what: "app name")
                try AppStore.checkName(info.version, what: "app version")
                try AppStore.checkName(info.file, what: "app file name")
            } else if let info = payload.settings {
                guard configuration.settingsStore != nil else {
                    throw FerryError(
                        code: .configurationInvalid,
                        message: "the bundle carries settings, but \(configuration.path) names no settingsStore")
                }
                try AppStore.checkName(info.name, what: "settings name")
                guard payload.size <= Int64(SettingsStore.maximumSize) else {
                    throw FerryError(
                        code: .limitExceeded,
                        message:
                            "settings '\(info.name)' is \(payload.size) bytes, more than \(SettingsStore.maximumSize)")
                }
            }
        }
    }

    /// Stages one settings document for `group`: checked as it would be activated now, then kept
    /// (as received) until the group is confirmed.
    func stageSettings(_ info: Manifest.SettingsInfo, incoming: [UInt8], group: String) throws(FerryError) {
        _ = try settings.candidate(
            name: info.name, format: info.format, mergePatch: info.mergePatch, incoming: incoming)
        let directory = stagingDirectory(group)
        try DurableFile.createDirectory(directory)
        try DurableFile.write(incoming, to: "\(directory)/\(info.name)")
    }

    /// Before an install into `target` writes anything: parts active with another group became the
    /// base of the next release and are settled (their record dropped, they stay active); parts
    /// staged for any group are dropped (the install into `target` marks it bad; a group other
    /// than the target cannot have staged parts while the device runs it unconfirmed).
    public func settle(beforeInstallInto target: String) throws(FerryError) {
        guard let record = try store.groupParts() else { return }
        if record.group != target, record.state == .active {
            logger.info(
                "Settling the apps and settings of a confirmed group", metadata: ["group.bootname": "\(record.group)"])
            try remove(record)
        } else {
            try abandon(record)
        }
    }

    /// `bootname` is being confirmed: activates its staged parts (each health-checked; on a failure
    /// every part goes back and this throws, so the group is not confirmed); parts active with
    /// another group are switched back (the device now confirms a different group).
    public func confirm(_ bootname: String) throws(FerryError) {
        guard var record = try store.groupParts() else { return }
        guard record.group == bootname else {
            if record.state != .staged { try abandon(record) }
            return
        }
        if record.state == .active { return }
        try activate(
            &record,
            failure:
                "the apps and settings of bundle \(record.version) were switched back and group \(bootname) is not confirmed"
        )
        logger.info(
            "Activated the apps and settings of the confirmed group", metadata: ["group.bootname": "\(bootname)"])
    }

    /// Activates the parts of an app or settings install (no group switch), staged already: all
    /// of them or, when a health check fails, none (every part goes back and this throws). The
    /// record kept meanwhile lets the next install or boot-check switch back an activation that
    /// was cut before its checks passed.
    public func activateInstall(_ parts: [GroupParts.Part], bundle: String, version: String) throws(FerryError) {
        var record = GroupParts(group: "", bundle: bundle, version: version, parts: parts)
        defer { try? FileSystem.removeTree(stagingDirectory("")) }
        try activate(&record, failure: nil)
        try store.setInstallParts(nil)
    }

    /// An app or settings install cut during its activation is switched back: its health checks
    /// did not all pass, so what it replaced is put back whole.
    /// Also removes what killed app and settings writes leave behind (temporary files and links,
    /// partial staging directories): they belong to no install, since the global lock is held.
    public func recoverInterruptedInstall() throws(FerryError) {
        try removeLeftovers()
        guard let record = try store.installParts() else { return }
        logger.warning(
            "Switching back an app or settings install that was cut during its activation",
            metadata: ["bundle": "\(record.bundle)"])
        try abandon(record)
    }

    /// Removes temporary files of interrupted writes from the stores: `.<name>.tmp-<pid>` (a file
    /// replaced atomically), `.<name>.candidate-<pid>` (a settings document under validation),
    /// `current.tmp-<pid>`/`previous.tmp-<pid>` (a link being switched) and `.<version>.partial-<pid>`
    /// (an app version being written). Callers hold the global lock, so no live writer owns them.
    func removeLeftovers() throws(FerryError) {
        if let directory = configuration.settingsStore {
            for folder in [directory]
                + FileSystem.entries(directory).filter({ $0 == ".install" || $0.hasPrefix(".group-") }).map({
                    "\(directory)/\($0)"
                })
            {
                for entry in FileSystem.entries(folder) where Self.isLeftover(entry) {
                    logger.info("Removing a leftover of an interrupted write", metadata: ["path": "\(folder)/\(entry)"])
                    try FileSystem.removeTree("\(folder)/\(entry)")
                }
            }
        }
        if let directory = configuration.appStore {
            for app in FileSystem.entries(directory)
            where !app.hasPrefix(".") && TextFile.isDirectory("\(directory)/\(app)") {
                for entry in FileSystem.entries("\(directory)/\(app)") where Self.isLeftover(entry) {
                    logger.info(
                        "Removing a leftover of an interrupted write",
                        metadata: ["path": "\(directory)/\(app)/\(entry)"])
                    try FileSystem.removeTree("\(directory)/\(app)/\(entry)")
                }
            }
        }
    }

    /// Whether a store entry is a temporary of an interrupted write (see ``removeLeftovers()``).
    static func isLeftover(_ entry: String) -> Bool {
        for marker in [".tmp-", ".candidate-", ".partial-"] {
            // The marker followed by digits only, to the end of the name.
            let scalars = Array(entry.unicodeScalars)
            let pattern = Array(marker.unicodeScalars)
            guard scalars.count > pattern.count else { continue }
            for start in 0...(scalars.count - pattern.count)
            where scalars[start..<(start + pattern.count)].elementsEqual(pattern) {
                let digits = scalars[(start + pattern.count)...]
                if !digits.isEmpty, digits.allSatisfy({ ("0"..."9").contains($0) }) { return true }
            }
        }
        return false
    }

    /// Records what each part replaces (once, before the first part changes), activates every
    /// part, then runs their health checks. On a failure every part goes back, the record returns
    /// to `staged`, and it throws `.healthCheckFailed` (`failure` says what that means for the group).
    private func activate(_ record: inout GroupParts, failure suffix: String?) throws(FerryError) {
        let file = recordFile(record)
        if record.state == .staged {
            for index in record.parts.indices {
                try recordReplaced(&record.parts[index], group: record.group)
            }
            record.state = .activating
            try store.write(record, to: file)
        }
        for part in record.parts {
            try activate(part, group: record.group)
        }
        for part in record.parts {
            guard let failure = healthCheck(part) else { continue }
            try switchBack(record)
            record.state = .staged
            try store.write(record.group.isEmpty ? nil : record, to: file)
            let back: String
            switch (part.kind, part.replaced) {
            case (.app, let version?): back = "switched back to \(version)"
            case (.app, nil): back = "deactivated (no earlier version)"
            case (.settings, .some): back = "the previous version is back"
            case (.settings, nil): back = "removed (no earlier version)"
            }
            let others = record.parts.count > 1 ? "; the bundle's other apps and settings went back too" : ""
            throw FerryError(code: .healthCheckFailed, message: "\(part.label): \(failure); \(suffix ?? back + others)")
        }
        record.state = .active
        try store.write(record, to: file)
        // Every check passed: versions beyond `apps.keep` can go now.
        for part in record.parts where part.kind == .app { try apps.prune(part.name) }
    }

    /// `bootname` is marked bad: its parts are dropped (staged) or switched back (active).
    public func markedBad(_ bootname: String) throws(FerryError) {
        guard let record = try store.groupParts(), record.group == bootname else { return }
        try abandon(record)
    }

    /// `bootname` is made active: parts of another group are dropped or switched back.
    public func madeActive(_ bootname: String) throws(FerryError) {
        guard let record = try store.groupParts(), record.group != bootname else { return }
        try abandon(record)
    }

    /// Drops staged parts, switches active ones back, and removes the record.
    func abandon(_ record: GroupParts) throws(FerryError) {
        // An install without a group has no group to name: name its bundle.
        let owner = record.group.isEmpty ? "bundle \(record.version) (\(record.bundle))" : "group \(record.group)"
        if record.state != .staged {
            logger.warning("Switching back the apps and settings of \(owner)")
            try switchBack(record)
        } else {
            logger.info("Dropping the staged apps and settings of \(owner)")
        }
        try remove(record)
    }

    func remove(_ record: GroupParts) throws(FerryError) {
        try store.write(GroupParts?.none, to: recordFile(record))
        if configuration.settingsStore != nil { try FileSystem.removeTree(stagingDirectory(record.group)) }
    }

    private func recordReplaced(_ part: inout GroupParts.Part, group: String) throws(FerryError) {
        switch part.kind {
        case .app:
            part.replaced = apps.current(part.name)
            part.replacedPrevious = apps.previous(part.name)
        case .settings:
            let active = settings.path(part.name)
            if TextFile.exists(active) {
                try DurableFile.write(
                    try TextFile.readBytes(active, limit: SettingsStore.maximumSize),
                    to: "\(stagingDirectory(group))/\(part.name).replaced")
                part.replaced = "kept"
            } else {
                part.replaced = nil
            }
        }
    }

    /// Makes one part active; repeatable (a merge patch applied twice gives the same document).
    private func activate(_ part: GroupParts.Part, group: String) throws(FerryError) {
        switch part.kind {
        case .app:
            guard let version = part.version else { return }
            // Not pruned yet: a failing health check must find every version it switches back to.
            if apps.current(part.name) != version { try apps.activate(name: part.name, version: version, prune: false) }
        case .settings:
            let staged = "\(stagingDirectory(group))/\(part.name)"
            let incoming = try TextFile.readBytes(staged, limit: SettingsStore.maximumSize)
            let document = try settings.candidate(
                name: part.name, format: part.format ?? "json", mergePatch: part.mergePatch, incoming: incoming)
            try settings.replace(name: part.name, with: document)
        }
    }

    private func healthCheck(_ part: GroupParts.Part) -> String? {
        switch part.kind {
        case .app:
            guard let check = configuration.apps.healthCheck, let version = part.version else { return nil }
            return HealthCheck.failure(
                of: check,
                environment: [
                    "FERRY_APP": part.name, "FERRY_APP_VERSION": version,
                    "FERRY_APP_DIR": "\(apps.directory)/\(part.name)/\(version)",
                    "FERRY_CONFIG": configuration.path,
                ], timeoutSeconds: configuration.apps.timeoutSeconds)
        case .settings:
            return settings.healthCheck(part.name)
        }
    }

    /// Puts back what activation replaced, last part first.
    private func switchBack(_ record: GroupParts) throws(FerryError) {
        for part in record.parts.reversed() {
            switch part.kind {
            case .app:
                // Both links as they were: `current` and `previous` (a later 'apps rollback' must
                // not return to the version that failed).
                if let replaced = part.replaced, TextFile.isDirectory("\(apps.directory)/\(part.name)/\(replaced)") {
                    try apps.restore(part.name, current: replaced, previous: part.replacedPrevious)
                } else if part.replaced == nil {
                    try apps.restore(part.name, current: nil, previous: part.replacedPrevious)
                } else {
                    logger.warning("The app version to switch back to is gone", metadata: ["app.name": "\(part.name)"])
                }
            case .settings:
                let saved = "\(stagingDirectory(record.group))/\(part.name).replaced"
                if part.replaced != nil, TextFile.exists(saved) {
                    try settings.replace(
                        name: part.name, with: try TextFile.readBytes(saved, limit: SettingsStore.maximumSize))
                } else if part.replaced == nil {
                    try settings.remove(part.name)
                }
            }
        }
    }
}
