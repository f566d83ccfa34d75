import FerryBundle
import FerryCrypto
import FerryDelta
import FerrySystem
import Logging

/// The app and settings steps: apps staged into the app store, settings documents checked and
/// staged; and the install of a bundle that carries nothing else.
extension Installer {
    /// An app-only bundle: every app is written into the app store (staged, synced, renamed in),
    /// then each is activated and health-checked; a failing check switches that app back.
    /// No slot is written and no group switches.
    func installApps(_ bundle: VerifiedBundle, bundleName: String) throws(FerryError) -> Result {
        let (manifest, reader, keyring, trustedTime) = (
            bundle.manifest, bundle.reader, bundle.keyring, bundle.trustedTime
        )
        let control = GroupPartsControl(configuration: configuration, logger: logger)
        try control.checkCanStage(manifest.payloads)
        // Settings are read and checked (well-formed, schema, merge patch, validation command)
        // before anything is replaced; apps are written as complete, inactive versions.
        var parts: [GroupParts.Part] = []
        do {
            for payload in manifest.payloads {
                if let info = payload.settings {
                    try stageSettings(payload, info, reader: reader, parts: control, group: "")
                    parts.append(
                        GroupParts.Part(
                            kind: .settings, name: info.name, format: info.format, mergePatch: info.mergePatch))
                } else if let info = payload.app {
                    try stageApp(payload, info, into: control.apps, reader: reader)
                    parts.append(GroupParts.Part(kind: .app, name: info.name, version: info.version))
                }
            }
            try reader.finish()
        } catch {
            try? FileSystem.removeTree(control.stagingDirectory(""))
            throw error
        }
        let store = StateStore(directory: configuration.stateDirectory)
        if let keyring, let update = manifest.keyring {
            try store.adoptKeyring(keyring, denyList: update.denyList, from: bundleName)
        }
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

    /// Writes an app payload into the app store as a complete, inactive version.
    func stageApp(_ payload: Manifest.Payload, _ info: Manifest.AppInfo, into apps: AppStore, reader: BundleReader)
        throws(FerryError)
    {
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
                progress(
                    ProgressEvent(
                        stage: .write, slot: info.name, bytesDone: offset + Int64(bytes.count), bytesTotal: payload.size
                    ))
            }
        }
    }

    /// Reads a settings payload whole (at most 16 MiB, every chunk checked) and stages it for `group`
    /// ("": activated with the rest of the install) after checking it as the device would activate it now.
    func stageSettings(
        _ payload: Manifest.Payload, _ info: Manifest.SettingsInfo, reader: BundleReader, parts: GroupPartsControl,
        group: String
    ) throws(FerryError) {
        var incoming: [UInt8] = []
        try reader.readPayload(payload) { (_, _, bytes) throws(FerryError) in incoming += bytes }
        try parts.stageSettings(info, incoming: incoming, group: group)
    }
}
