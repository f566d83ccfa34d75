import FerryBundle
import FerryJSON
import FerrySystem
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The app and settings parts of a mixed bundle: one that also writes slot images and switches
/// groups (docs/mixed-bundles.md). They belong to the group the bundle was installed into:
///
/// * **staged** by the install: apps as complete, inactive versions in the app store; settings as
///   the checked incoming documents under `<settingsStore>/.group-<bootname>/`;
/// * **activated** when that group is confirmed (`boot-check`, `mark good`), before the
///   bootloader is told it is good, each with its health check: a failing one switches every part
///   back and the group is not confirmed;
/// * **dropped** (staged) or **switched back** (active) with the group: when it is marked bad
///   (a fallback noticed by `boot-check`, `mark bad`, a new install into it), when another group is
///   made active, or when another group is confirmed while they are active.
///
/// The record is `<state>/group-parts.json`; there is at most one. It is written before the
/// group switch, and every step is repeatable, so a cut at any instant is finished by the next
/// run of the same step.
public struct GroupParts: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Written into the stores, not active; the group is not confirmed yet.
        case staged
        /// Being activated: what each part replaces is recorded (a cut here is finished or undone by the next step).
        case activating
        /// Active with the confirmed group.
        case active
    }

    public struct Part: Sendable, Equatable {
        public enum Kind: String, Sendable { case app, settings }
        public var kind: Kind
        public var name: String
        /// The app version (apps).
        public var version: String?
        /// `json` or `xml` (settings).
        public var format: String?
        public var mergePatch: Bool
        /// What activation replaced: the app's earlier current version, or for settings `kept`
        /// when the earlier document was saved beside the staged one. nil: there was none.
        public var replaced: String?
        /// The app's earlier `previous` version (what `apps rollback` returned to before this
        /// activation), put back with `replaced` when the activation is switched back.
        public var replacedPrevious: String?
        /// Every key as read, those a newer Ferry wrote included: kept on rewrite (docs/state.md).
        var raw: [String: JSONValue] = [:]

        public init(
            kind: Kind, name: String, version: String? = nil, format: String? = nil, mergePatch: Bool = false, replaced: String? = nil,
            replacedPrevious: String? = nil
        ) {
            self.kind = kind
            self.name = name
            self.version = version
            self.format = format
            self.mergePatch = mergePatch
            self.replaced = replaced
            self.replacedPrevious = replacedPrevious
        }

        var label: String { kind == .app ? "app '\(name)' \(version ?? "")" : "settings '\(name)'" }
        /// How an install's result names it: `nav 2.0`, `settings carrier.json`.
        var summary: String { kind == .app ? "\(name) \(version ?? "")" : "settings \(name)" }
    }

    public var group: String
    public var bundle: String
    public var version: String
    public var state: State
    /// In manifest order.
    public var parts: [Part]
    /// Every key as read, those a newer Ferry wrote included: kept on rewrite (docs/state.md).
    var raw: [String: JSONValue] = [:]

    public init(group: String, bundle: String, version: String, state: State = .staged, parts: [Part]) {
        self.group = group
        self.bundle = bundle
        self.version = version
        self.state = state
        self.parts = parts
    }

    init(json: [String: JSONValue], path: String) throws(FerryError) {
        guard let group = json["group"]?.stringValue, let stateName = json["state"]?.stringValue, let state = State(rawValue: stateName),
            case .array(let entries) = json["parts"] ?? .null
        else {
            throw FerryError(code: .stateInvalid, message: "state file '\(path)': needs 'group', 'state' (staged, activating or active) and 'parts'")
        }
        var parts: [Part] = []
        for entry in entries {
            guard let object = entry.objectValue, let kind = object["kind"]?.stringValue.flatMap(Part.Kind.init(rawValue:)),
                let name = object["name"]?.stringValue
            else {
                throw FerryError(code: .stateInvalid, message: "state file '\(path)': every part needs a 'kind' (app or settings) and a 'name'")
            }
            try AppStore.checkName(name, what: "state file '\(path)': part name")
            if let version = object["version"]?.stringValue { try AppStore.checkName(version, what: "state file '\(path)': app version") }
            if kind == .app, object["version"]?.stringValue == nil {
                throw FerryError(code: .stateInvalid, message: "state file '\(path)': app part '\(name)' has no version")
            }
            var part = Part(
                kind: kind, name: name, version: object["version"]?.stringValue, format: object["format"]?.stringValue,
                mergePatch: object["mergePatch"] == .bool(true), replaced: object["replaced"]?.stringValue,
                replacedPrevious: object["replacedPrevious"]?.stringValue)
            part.raw = object
            parts.append(part)
        }
        self.init(
            group: group, bundle: json["bundle"]?.stringValue ?? "", version: json["version"]?.stringValue ?? "", state: state, parts: parts)
        raw = json
    }

    var json: JSONValue {
        .object(
            raw.merging([
                "formatVersion": .number(Double(max(StateStore.formatVersion, raw["formatVersion"]?.int64Value ?? 0))), "group": .string(group), "bundle": .string(bundle),
                "version": .string(version), "state": .string(state.rawValue),
                "parts": .array(
                    parts.map { part in
                        // The keys this Ferry knows are set or removed; the others stay.
                        var object = part.raw
                        object["kind"] = .string(part.kind.rawValue)
                        object["name"] = .string(part.name)
                        object["version"] = part.version.map(JSONValue.string)
                        object["format"] = part.format.map(JSONValue.string)
                        object["mergePatch"] = part.mergePatch ? .bool(true) : nil
                        object["replaced"] = part.replaced.map(JSONValue.string)
                        object["replacedPrevious"] = part.replacedPrevious.map(JSONValue.string)
                        return .object(object)
                    }),
            ]) { _, known in known })
    }
}

extension StateStore {
    public var groupPartsPath: String { "\(directory)/group-parts.json" }
    /// The record of an app or settings install being activated (no group): what a cut leaves
    /// behind, switched back by the next install or boot-check.
    public var installPartsPath: String { "\(directory)/install-parts.json" }

    /// The app and settings parts of the last mixed bundle, if any are staged or active.
    public func groupParts() throws(FerryError) -> GroupParts? { try parts(at: groupPartsPath) }

    public func setGroupParts(_ parts: GroupParts?) throws(FerryError) { try setParts(parts, at: groupPartsPath) }

    func parts(at path: String) throws(FerryError) -> GroupParts? {
        guard TextFile.exists(path) else { return nil }
        return try GroupParts(json: try readObject(path), path: path)
    }

    func setParts(_ parts: GroupParts?, at path: String) throws(FerryError) {
        guard let parts else {
            try FileSystem.remove(path)
            IOTrace.recordRemoval(path)
            try DurableFile.synchronizeDirectory(directory)
            return
        }
        try DurableFile.createDirectory(directory)
        try DurableFile.write(parts.json.serialized(), to: path)
    }
}

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

    var apps: AppStore { AppStore(directory: configuration.appStore ?? "", keep: configuration.apps.keep, logger: logger) }
    var settings: SettingsStore { SettingsStore(directory: configuration.settingsStore ?? "", configuration: configuration.settings) }

    /// Where the settings of a group's parts wait: `<settingsStore>/.group-<bootname>`; those of
    /// an install without a group (empty `group`): `<settingsStore>/.install`.
    func stagingDirectory(_ group: String) -> String {
        "\(configuration.settingsStore ?? "")/" + (group.isEmpty ? ".install" : ".group-\(group)")
    }
    func recordPath(_ record: GroupParts) -> String { record.group.isEmpty ? store.installPartsPath : store.groupPartsPath }

    /// Checks that the device can take these parts (stores configured, plain names), before anything is written.
    public func checkCanStage(_ payloads: [Manifest.Payload]) throws(FerryError) {
        for payload in payloads {
            if let info = payload.app {
                guard configuration.appStore != nil else {
                    throw FerryError(code: .configurationInvalid, message: "the bundle carries apps, but \(configuration.path) names no appStore")
                }
                try AppStore.checkName(info.name, what: "app name")
                try AppStore.checkName(info.version, what: "app version")
                try AppStore.checkName(info.file, what: "app file name")
            } else if let info = payload.settings {
                guard configuration.settingsStore != nil else {
                    throw FerryError(code: .configurationInvalid, message: "the bundle carries settings, but \(configuration.path) names no settingsStore")
                }
                try AppStore.checkName(info.name, what: "settings name")
                guard payload.size <= Int64(SettingsStore.maximumSize) else {
                    throw FerryError(code: .limitExceeded, message: "settings '\(info.name)' is \(payload.size) bytes, more than \(SettingsStore.maximumSize)")
                }
            }
        }
    }

    /// Stages one settings document for `group`: checked as it would be activated now, then kept
    /// (as received) until the group is confirmed.
    func stageSettings(_ info: Manifest.SettingsInfo, incoming: [UInt8], group: String) throws(FerryError) {
        _ = try settings.candidate(name: info.name, format: info.format, mergePatch: info.mergePatch, incoming: incoming)
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
            logger.info("Settling the apps and settings of a confirmed group", metadata: ["group.bootname": "\(record.group)"])
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
        try activate(&record, failure: "the apps and settings of bundle \(record.version) were switched back and group \(bootname) is not confirmed")
        logger.info("Activated the apps and settings of the confirmed group", metadata: ["group.bootname": "\(bootname)"])
    }

    /// Activates the parts of an app or settings install (no group switch), staged already: all
    /// of them or, when a health check fails, none (every part goes back and this throws). The
    /// record kept meanwhile lets the next install or boot-check switch back an activation that
    /// was cut before its checks passed.
    public func activateInstall(_ parts: [GroupParts.Part], bundle: String, version: String) throws(FerryError) {
        var record = GroupParts(group: "", bundle: bundle, version: version, parts: parts)
        defer { try? FileSystem.removeTree(stagingDirectory("")) }
        try activate(&record, failure: nil)
        try store.setParts(nil, at: store.installPartsPath)
    }

    /// An app or settings install cut during its activation is switched back: its health checks
    /// did not all pass, so what it replaced is put back whole.
    /// Also removes what killed app and settings writes leave behind (temporary files and links,
    /// partial staging directories): they belong to no install, since the global lock is held.
    public func recoverInterruptedInstall() throws(FerryError) {
        try removeLeftovers()
        guard let record = try store.parts(at: store.installPartsPath) else { return }
        logger.warning("Switching back an app or settings install that was cut during its activation", metadata: ["bundle": "\(record.bundle)"])
        try abandon(record)
    }

    /// Removes temporary files of interrupted writes from the stores: `.<name>.tmp-<pid>` (a file
    /// replaced atomically), `.<name>.candidate-<pid>` (a settings document under validation),
    /// `current.tmp-<pid>`/`previous.tmp-<pid>` (a link being switched) and `.<version>.partial-<pid>`
    /// (an app version being written). Callers hold the global lock, so no live writer owns them.
    func removeLeftovers() throws(FerryError) {
        if let directory = configuration.settingsStore {
            for folder in [directory] + FileSystem.entries(directory).filter({ $0 == ".install" || $0.hasPrefix(".group-") }).map({ "\(directory)/\($0)" }) {
                for entry in FileSystem.entries(folder) where Self.isLeftover(entry) {
                    logger.info("Removing a leftover of an interrupted write", metadata: ["path": "\(folder)/\(entry)"])
                    try FileSystem.removeTree("\(folder)/\(entry)")
                }
            }
        }
        if let directory = configuration.appStore {
            for app in FileSystem.entries(directory) where !app.hasPrefix(".") && TextFile.isDirectory("\(directory)/\(app)") {
                for entry in FileSystem.entries("\(directory)/\(app)") where Self.isLeftover(entry) {
                    logger.info("Removing a leftover of an interrupted write", metadata: ["path": "\(directory)/\(app)/\(entry)"])
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
            for start in 0...(scalars.count - pattern.count) where scalars[start..<(start + pattern.count)].elementsEqual(pattern) {
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
        let path = recordPath(record)
        if record.state == .staged {
            for index in record.parts.indices {
                try recordReplaced(&record.parts[index], group: record.group)
            }
            record.state = .activating
            try store.setParts(record, at: path)
        }
        for part in record.parts {
            try activate(part, group: record.group)
        }
        for part in record.parts {
            guard let failure = healthCheck(part) else { continue }
            try switchBack(record)
            record.state = .staged
            try store.setParts(record.group.isEmpty ? nil : record, at: path)
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
        try store.setParts(record, at: path)
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
        try store.setParts(nil, at: recordPath(record))
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
                    try TextFile.readBytes(active, limit: SettingsStore.maximumSize), to: "\(stagingDirectory(group))/\(part.name).replaced")
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
                    "FERRY_APP": part.name, "FERRY_APP_VERSION": version, "FERRY_APP_DIR": "\(apps.directory)/\(part.name)/\(version)",
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
                    try settings.replace(name: part.name, with: try TextFile.readBytes(saved, limit: SettingsStore.maximumSize))
                } else if part.replaced == nil {
                    try settings.remove(part.name)
                }
            }
        }
    }
}
