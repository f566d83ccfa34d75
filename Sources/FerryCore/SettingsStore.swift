import FerryBundle
import FerryJSON
import FerrySystem
import FerryXML
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Configuration (settings) updates (docs/settings.md): JSON or XML parameter sets, checked before
/// anything is replaced, replaced atomically, the previous version kept for rollback.
///
///     <settingsStore>/<name>            the active document
///     <settingsStore>/<name>.previous   the one it replaced
public struct SettingsStore {
    public let directory: String
    public let configuration: SettingsConfiguration
    /// The largest settings document accepted.
    public static let maximumSize = 16 << 20

    public init(directory: String, configuration: SettingsConfiguration) {
        self.directory = directory
        self.configuration = configuration
    }

    public func path(_ name: String) -> String { "\(directory)/\(name)" }

    /// Installed settings: name, and whether a previous version is kept.
    public func list() -> [(name: String, hasPrevious: Bool)] {
        FileSystem.entries(directory).filter {
            !$0.hasPrefix(".") && !$0.hasSuffix(".previous") && !GroupPartsControl.isLeftover($0)
        }.sorted().map {
            ($0, TextFile.exists("\(directory)/\($0).previous"))
        }
    }

    /// The document `incoming` becomes, checked: well-formed JSON (applied as a merge patch to the
    /// active document with `mergePatch`) or XML (libxml2, and the configured XSD for `name`),
    /// then the configured validation command.
    /// - Throws: `.bundleInvalid` naming what is wrong; `.healthCheckFailed` when the validation command refuses it.
    public func candidate(name: String, format: String, mergePatch: Bool, incoming: [UInt8]) throws(FerryError)
        -> [UInt8]
    {
        try Self.checkWellFormed(incoming, name: name, format: format, mergePatch: mergePatch)
        var document = incoming
        switch format {
        case "json":
            let value = try JSONValue.parse(incoming, what: "settings '\(name)'", code: .bundleInvalid)
            if mergePatch {
                let active = path(name)
                guard TextFile.exists(active) else {
                    throw FerryError(
                        code: .bundleInvalid,
                        message: "settings '\(name)': a merge patch needs an active document, and there is none")
                }
                let current: JSONValue
                do {
                    current = try JSONValue.parse(
                        try TextFile.readBytes(active, limit: Self.maximumSize), what: active, code: .bundleInvalid)
                } catch {
                    throw FerryError(
                        code: .bundleInvalid,
                        message:
                            "settings '\(name)': a JSON merge patch cannot apply to '\(active)', which is not JSON (\(error.message))"
                    )
                }
                document = current.mergePatched(with: value).serialized()
            }
        case "xml":
            guard !mergePatch else {
                throw FerryError(code: .bundleInvalid, message: "settings '\(name)': merge patches are JSON only")
            }
            try Self.checkXML(incoming, name: name, schema: configuration.schemas[name])
        default:
            throw FerryError(code: .bundleInvalid, message: "settings '\(name)': format '\(format)' is not json or xml")
        }
        if let validate = configuration.validate {
            let scratch = "\(directory)/.\(name).candidate-\(FileSystem.processID)"
            try DurableFile.write(document, to: scratch)
            defer { FileSystem.removeIfPossible(scratch) }
            let validation = ExternalCommand(
                role: "the validation command", [validate, scratch],
                environment: ["FERRY_SETTINGS": name, "FERRY_SETTINGS_FORMAT": format],
                timeoutSeconds: configuration.timeoutSeconds)
            if let failure = validation.failure(validation.run()) {
                throw FerryError(
                    code: .bundleInvalid, message: "settings '\(name)': \(failure): it refuses the document")
            }
        }
        return document
    }

    /// Replaces the active document (the old one kept as `.previous` first; each write atomic).
    public func replace(name: String, with document: [UInt8]) throws(FerryError) {
        try DurableFile.createDirectory(directory)
        let active = path(name)
        if TextFile.exists(active) {
            try DurableFile.write(try TextFile.readBytes(active, limit: Self.maximumSize), to: "\(active).previous")
        }
        try DurableFile.write(document, to: active)
    }

    /// Puts the previous document back (the replaced one becomes previous).
    /// - Throws: `.unknownSlot` when there is none.
    public func rollback(_ name: String) throws(FerryError) {
        try AppStore.checkName(name, what: "settings name")
        let active = path(name)
        guard TextFile.exists("\(active).previous") else {
            throw FerryError(
                code: .nothingToRollBack, message: "settings '\(name)' has no previous version to roll back to")
        }
        let previous = try TextFile.readBytes("\(active).previous", limit: Self.maximumSize)
        if TextFile.exists(active) {
            try DurableFile.write(try TextFile.readBytes(active, limit: Self.maximumSize), to: "\(active).previous")
        }
        try DurableFile.write(previous, to: active)
    }

    /// Removes a document that has no earlier version (its first version failed its health check).
    public func remove(_ name: String) throws(FerryError) {
        let active = path(name)
        try FileSystem.remove(active)
        try DurableFile.synchronizeDirectory(directory)
    }

    /// Runs the configured health check for `name`.
    /// - Returns: nil when it passed (or none is configured), else how it failed.
    public func healthCheck(_ name: String) -> String? {
        guard let check = configuration.healthCheck else { return nil }
        return HealthCheck.failure(
            of: check, environment: ["FERRY_SETTINGS": name, "FERRY_SETTINGS_FILE": path(name)],
            timeoutSeconds: configuration.timeoutSeconds)
    }

    /// What every device checks of a settings document whatever its configuration: a plain name,
    /// a known format, well-formed JSON or XML, merge patches JSON only. `ferry bundle create`
    /// runs it too, so that the host refuses what every device would refuse, with the same message.
    /// - Throws: `.bundleInvalid`.
    public static func checkWellFormed(_ bytes: [UInt8], name: String, format: String, mergePatch: Bool)
        throws(FerryError)
    {
        try AppStore.checkName(name, what: "settings name")
        switch format {
        case "json": _ = try JSONValue.parse(bytes, what: "settings '\(name)'", code: .bundleInvalid)
        case "xml":
            guard !mergePatch else {
                throw FerryError(code: .bundleInvalid, message: "settings '\(name)': merge patches are JSON only")
            }
            try checkXML(bytes, name: name, schema: nil)
        default:
            throw FerryError(code: .bundleInvalid, message: "settings '\(name)': format '\(format)' is not json or xml")
        }
    }

    /// Well-formed XML (no network access, no external entities), valid against `schema` if given.
    static func checkXML(_ bytes: [UInt8], name: String, schema: String?) throws(FerryError) {
        switch XMLCheck.problem(in: bytes, schema: schema) {
        case nil: return
        case .notWellFormed(let detail):
            throw FerryError(code: .bundleInvalid, message: "settings '\(name)' is not well-formed XML: \(detail)")
        case .schemaUnreadable:
            throw FerryError(
                code: .configurationInvalid, message: "settings '\(name)': cannot read the XML schema '\(schema ?? "")'"
            )
        case .schemaInvalid:
            throw FerryError(
                code: .configurationInvalid,
                message: "settings '\(name)': the XML schema '\(schema ?? "")' is not a valid XSD")
        case .invalid(let detail):
            throw FerryError(
                code: .bundleInvalid,
                message: "settings '\(name)' does not validate against '\(schema ?? "")': \(detail)")
        case .resources:
            throw FerryError(code: .internal, message: "libxml2: no validation context")
        }
    }
}

/// The health checks of app and settings updates.
enum HealthCheck {
    /// Runs `command`; nil when it exits 0 in time, else how it failed. A command that cannot be
    /// started counts as failed: what it was to check gets switched back all the same.
    static func failure(of command: String, environment: [String: String], timeoutSeconds: Int) -> String? {
        let check = ExternalCommand(
            role: "health check", [command], environment: environment, timeoutSeconds: timeoutSeconds)
        return check.failure(check.run())
    }
}
