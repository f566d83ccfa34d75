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
public struct GroupParts: Sendable, Equatable, StateRecord {
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
            kind: Kind, name: String, version: String? = nil, format: String? = nil, mergePatch: Bool = false,
            replaced: String? = nil,
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
        guard let group = json["group"]?.stringValue, let stateName = json["state"]?.stringValue,
            let state = State(rawValue: stateName),
            case .array(let entries) = json["parts"] ?? .null
        else {
            throw FerryError(
                code: .stateInvalid,
                message: "state file '\(path)': needs 'group', 'state' (staged, activating or active) and 'parts'")
        }
        var parts: [Part] = []
        for entry in entries {
            guard let object = entry.objectValue,
                let kind = object["kind"]?.stringValue.flatMap(Part.Kind.init(rawValue:)),
                let name = object["name"]?.stringValue
            else {
                throw FerryError(
                    code: .stateInvalid,
                    message: "state file '\(path)': every part needs a 'kind' (app or settings) and a 'name'")
            }
            try AppStore.checkName(name, what: "state file '\(path)': part name")
            if let version = object["version"]?.stringValue {
                try AppStore.checkName(version, what: "state file '\(path)': app version")
            }
            if kind == .app, object["version"]?.stringValue == nil {
                throw FerryError(
                    code: .stateInvalid, message: "state file '\(path)': app part '\(name)' has no version")
            }
            var part = Part(
                kind: kind, name: name, version: object["version"]?.stringValue, format: object["format"]?.stringValue,
                mergePatch: object["mergePatch"] == .bool(true), replaced: object["replaced"]?.stringValue,
                replacedPrevious: object["replacedPrevious"]?.stringValue)
            part.raw = object
            parts.append(part)
        }
        self.init(
            group: group, bundle: json["bundle"]?.stringValue ?? "", version: json["version"]?.stringValue ?? "",
            state: state, parts: parts)
        raw = json
    }

    var json: [String: JSONValue] {
        var object = raw
        object["group"] = .string(group)
        object["bundle"] = .string(bundle)
        object["version"] = .string(version)
        object["state"] = .string(state.rawValue)
        object["parts"] = .array(
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
            })
        return object
    }
}

extension StateStore {
    public var groupPartsPath: String { path(.groupParts) }
    /// The record of an app or settings install being activated (no group): what a cut leaves
    /// behind, switched back by the next install or boot-check.
    public var installPartsPath: String { path(.installParts) }

    /// The app and settings parts of the last mixed bundle, if any are staged or active.
    public func groupParts() throws(FerryError) -> GroupParts? { try read(GroupParts.self, from: .groupParts) }

    public func setGroupParts(_ parts: GroupParts?) throws(FerryError) { try write(parts, to: .groupParts) }

    /// The record of an app or settings install being activated, if a cut left one.
    func installParts() throws(FerryError) -> GroupParts? { try read(GroupParts.self, from: .installParts) }

    func setInstallParts(_ parts: GroupParts?) throws(FerryError) { try write(parts, to: .installParts) }
}
