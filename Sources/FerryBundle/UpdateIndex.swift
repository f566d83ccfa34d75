import FerryCrypto
import FerryJSON
import FerrySystem

/// The signed update index (docs/update-index.md): what releases a server offers, so that a
/// device can tell whether an update applies to it and pick the cheapest bundle that does.
///
/// Signed like a manifest: detached CMS signatures `index.json.<n>.p7s` beside it, checked
/// against the device's keyring and threshold. `serial` only grows (a device refuses an index
/// older than the last it accepted: replay) and `expires` bounds how long an index may be served
/// unchanged (freeze).
public struct UpdateIndex: Sendable, Equatable {
    /// 2: entries bind their bundle's manifest (`manifestSha256`). Format 1 did not, and is refused.
    public static let formatVersion: Int64 = 2
    /// The largest index accepted (read before its signature is checked).
    public static let maximumSize = 1 << 20
    public static let maximumEntries = 4096
    public static let maximumSignatures = 16

    /// What one payload of a listed bundle is: enough to choose between bundles.
    public struct PayloadSummary: Sendable, Equatable {
        /// `image` or `delta` (later: `module`, `app`, `settings`).
        public var type: String
        public var target: String
        /// For deltas: the SHA-256 of the image the delta applies to.
        public var sourceSHA256: SHA256Digest?

        public init(type: String, target: String, sourceSHA256: SHA256Digest? = nil) {
            self.type = type
            self.target = target
            self.sourceSHA256 = sourceSHA256
        }
    }

    /// One bundle on offer.
    public struct Entry: Sendable, Equatable {
        public var compatible: String
        public var version: SemanticVersion
        public var securityVersion: Int64
        /// Where the bundle is: relative to the index's URL, or an absolute https:// URL.
        public var url: String
        public var size: Int64
        public var sha256: SHA256Digest
        /// The SHA-256 of the bundle's `manifest.json`: binds the entry to one signed manifest, so
        /// that a swapped bundle is refused as soon as its manifest is read, before any write.
        public var manifestSHA256: SHA256Digest
        public var payloads: [PayloadSummary]

        public init(
            compatible: String, version: SemanticVersion, securityVersion: Int64, url: String, size: Int64,
            sha256: SHA256Digest,
            manifestSHA256: SHA256Digest, payloads: [PayloadSummary]
        ) {
            self.compatible = compatible
            self.version = version
            self.securityVersion = securityVersion
            self.url = url
            self.size = size
            self.sha256 = sha256
            self.manifestSHA256 = manifestSHA256
            self.payloads = payloads
        }

        /// Whether the bundle carries a delta (it then applies only to a device whose booted
        /// images are the deltas' sources).
        public var isDelta: Bool { payloads.contains { $0.type == "delta" } }
    }

    public var serial: Int64
    /// Seconds since the epoch.
    public var created: Int64
    public var expires: Int64
    public var entries: [Entry]

    public init(serial: Int64, created: Int64, expires: Int64, entries: [Entry]) {
        self.serial = serial
        self.created = created
        self.expires = expires
        self.entries = entries
    }

    /// The canonical JSON (sorted keys): what is signed.
    public func serialized() -> [UInt8] {
        func number(_ value: Int64) -> JSONValue { .number(Double(value)) }
        return JSONValue.object([
            "formatVersion": number(Self.formatVersion), "serial": number(serial),
            "created": .string(WallClock.iso8601(created)),
            "expires": .string(WallClock.iso8601(expires)),
            "entries": .array(
                entries.map { entry in
                    .object([
                        "compatible": .string(entry.compatible), "version": .string(entry.version.description),
                        "securityVersion": number(entry.securityVersion), "url": .string(entry.url),
                        "size": number(entry.size),
                        "sha256": .string(entry.sha256.hex), "manifestSha256": .string(entry.manifestSHA256.hex),
                        "payloads": .array(
                            entry.payloads.map { payload in
                                var object: [String: JSONValue] = [
                                    "type": .string(payload.type), "target": .string(payload.target),
                                ]
                                if let source = payload.sourceSHA256 { object["sourceSha256"] = .string(source.hex) }
                                return .object(object)
                            }),
                    ])
                }),
        ]).serialized()
    }

    /// Parses and checks an index (after its signatures were verified).
    /// - Throws: `.bundleInvalid` naming the key; `.limitExceeded` for absurd sizes or counts.
    public static func parse(_ bytes: [UInt8]) throws(FerryError) -> UpdateIndex {
        guard bytes.count <= maximumSize else {
            throw FerryError(
                code: .limitExceeded, message: "the update index is \(bytes.count) bytes, more than \(maximumSize)")
        }
        let file = "index.json"
        var root = try StrictObject(
            JSONValue.parse(bytes, what: file, code: .bundleInvalid), path: "", file: file, code: .bundleInvalid)
        let version = try root.integer("formatVersion", in: 1...Int64(Int32.max)) ?? 0
        guard version != 1 else {
            throw root.invalid(
                "formatVersion",
                "is 1: an index of format 1 does not bind its bundles' manifests, so a swapped bundle would be noticed only after it was written; this Ferry reads format \(formatVersion): publish the index again with 'ferry bundle index'"
            )
        }
        guard version == formatVersion else {
            throw root.invalid("formatVersion", "is \(version); this Ferry reads update index format \(formatVersion)")
        }
        guard let serial = try root.integer("serial", in: 0...Int64(1) << 52) else {
            throw root.invalid("serial", "is required")
        }
        let created = try time(&root, "created")
        let expires = try time(&root, "expires")
        guard case .array(let items)? = root.raw("entries") else { throw root.invalid("entries", "must be an array") }
        guard items.count <= maximumEntries else {
            throw FerryError(
                code: .limitExceeded, message: "index.json: \(items.count) entries, more than \(maximumEntries)")
        }
        var entries: [Entry] = []
        for (index, item) in items.enumerated() {
            var object = try StrictObject(item, path: "entries[\(index)]", file: file, code: .bundleInvalid)
            let compatible = try object.requiredString("compatible")
            let versionText = try object.requiredString("version")
            guard let semver = SemanticVersion(versionText) else {
                throw object.invalid("version", "'\(versionText)' is not a semantic version")
            }
            let securityVersion = try object.integer("securityVersion", in: 0...Int64(UInt32.max)) ?? 0
            let url = try object.requiredString("url")
            guard !url.isEmpty, !url.contains("\\"),
                url.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
            else {
                throw object.invalid("url", "'\(url)' is not a URL")
            }
            if url.contains("://") && !url.hasPrefix("https://") {
                throw object.invalid("url", "'\(url)' is not https:// (Ferry never downloads over plain HTTP)")
            }
            guard let size = try object.integer("size", in: 1...Manifest.maximumPayloadSize) else {
                throw object.invalid("size", "is required")
            }
            let sha256 = try object.digest("sha256")
            let manifestSHA256 = try object.digest("manifestSha256")
            guard case .array(let payloadItems)? = object.raw("payloads"),
                payloadItems.count <= Manifest.maximumPayloads
            else {
                throw object.invalid("payloads", "must be an array of at most \(Manifest.maximumPayloads)")
            }
            var payloads: [PayloadSummary] = []
            for (number, payloadItem) in payloadItems.enumerated() {
                var payload = try StrictObject(
                    payloadItem, path: object.keyPath("payloads[\(number)]"), file: file, code: .bundleInvalid)
                let type = try payload.requiredString("type")
                let target = try payload.requiredString("target")
                var source: SHA256Digest? = nil
                if let text = try payload.string("sourceSha256") {
                    guard let value = SHA256Digest(hex: text) else {
                        throw payload.invalid("sourceSha256", "must be 64 hex digits")
                    }
                    source = value
                }
                guard (type == "delta") == (source != nil) else {
                    throw payload.invalid("sourceSha256", "is required for deltas and only for them")
                }
                try payload.finish()
                payloads.append(PayloadSummary(type: type, target: target, sourceSHA256: source))
            }
            try object.finish()
            entries.append(
                Entry(
                    compatible: compatible, version: semver, securityVersion: securityVersion, url: url, size: size,
                    sha256: sha256,
                    manifestSHA256: manifestSHA256, payloads: payloads))
        }
        try root.finish()
        return UpdateIndex(serial: serial, created: created, expires: expires, entries: entries)
    }

    private static func time(_ object: inout StrictObject, _ key: String) throws(FerryError) -> Int64 {
        let text = try object.requiredString(key)
        guard let seconds = WallClock.parseISO8601(text) else {
            throw object.invalid(key, "'\(text)' is not a UTC time like 2026-11-25T13:00:00Z")
        }
        return seconds
    }

    /// The entry describing a bundle (host side): its manifest says what it holds.
    /// - Parameters:
    ///   - manifestBytes: the bundle's `manifest.json`, exactly as stored.
    ///   - url: where the bundle will be, relative to the index.
    ///   - size, sha256: of the bundle file.
    public static func entry(
        for manifest: Manifest, manifestBytes: [UInt8], url: String, size: Int64, sha256: SHA256Digest
    ) -> Entry {
        Entry(
            compatible: manifest.compatible, version: manifest.version, securityVersion: manifest.securityVersion,
            url: url, size: size,
            sha256: sha256, manifestSHA256: SHA256Hasher.hash(manifestBytes), payloads: Self.summaries(of: manifest))
    }

    static func summaries(of manifest: Manifest) -> [PayloadSummary] {
        manifest.payloads.map { PayloadSummary(type: $0.type, target: $0.target, sourceSHA256: $0.delta?.sourceSHA256) }
    }
}

extension UpdateIndex.Entry {
    /// Refuses a bundle whose manifest is not the one this entry binds; runs as soon as the
    /// manifest is read, before its signatures are checked and before anything is written.
    /// - Throws: `.notIndexed`.
    public func checkManifest(_ manifestBytes: [UInt8], bundle: String) throws(FerryError) {
        let digest = SHA256Hasher.hash(manifestBytes)
        guard digest == manifestSHA256 else {
            throw FerryError(
                code: .notIndexed,
                message:
                    "\(bundle) is not the bundle the update index names for \(version): its manifest has SHA-256 \(digest.hex), the index says \(manifestSHA256.hex) (a swapped or stale file on the server)"
            )
        }
    }

    /// Refuses a verified manifest that says something other than this entry: another version,
    /// compatible, security version, or other payloads (a delta from another source).
    /// - Throws: `.notIndexed`.
    public func checkManifest(_ manifest: Manifest, bundle: String) throws(FerryError) {
        func refuse(_ what: String) -> FerryError {
            FerryError(code: .notIndexed, message: "\(bundle) is not the bundle the update index names: \(what)")
        }
        guard manifest.version == version else {
            throw refuse("it holds version \(manifest.version), the index entry says \(version)")
        }
        guard manifest.compatible == compatible else {
            throw refuse("it is for '\(manifest.compatible)', the index entry says '\(compatible)'")
        }
        guard manifest.securityVersion == securityVersion else {
            throw refuse("its security version is \(manifest.securityVersion), the index entry says \(securityVersion)")
        }
        let actual = UpdateIndex.summaries(of: manifest)
        guard actual == payloads else {
            for (index, summary) in actual.enumerated() where index < payloads.count && summary != payloads[index] {
                if let source = summary.sourceSHA256, payloads[index].sourceSHA256 != source {
                    throw refuse(
                        "its '\(summary.target)' delta applies to \(source.hex), the index entry names \(payloads[index].sourceSHA256?.hex ?? "no delta source")"
                    )
                }
                throw refuse(
                    "its payload \(index + 1) is \(summary.type) '\(summary.target)', the index entry says \(payloads[index].type) '\(payloads[index].target)'"
                )
            }
            throw refuse("it has \(actual.count) payload(s), the index entry lists \(payloads.count)")
        }
    }
}

// MARK: - Publishing (host side)

extension UpdateIndex {
    /// The entry for the bundle file at `path`, listed by its file name (the index and the bundles
    /// are served from one folder): its manifest as stored, the file's size and SHA-256.
    public static func entry(forBundleAt path: String) throws(FerryError) -> Entry {
        let reader = BundleReader(source: try FileByteSource(path: path))
        try reader.readSignedManifest()
        let manifest = try Manifest.parse(reader.manifestBytes)
        let file = try BlockDevice.openForReading(path)
        defer { try? file.close() }
        let name = String(path.split(separator: "/").last ?? Substring(path))
        return entry(
            for: manifest, manifestBytes: reader.manifestBytes, url: name, size: file.byteCount,
            sha256: try SHA256Hasher.hash(file))
    }

    /// A signer of the index: a certificate and its private key (PEM files), as for bundles.
    public typealias Signer = BundleWriter.Signer

    /// Writes the index to `output` and one detached signature per signer beside it
    /// (`<output>.1.p7s`, …): the signatures first and the index last, so that a server never shows
    /// a new index without them; signature files left by an index with more signers are removed.
    /// - Throws: `.expired` for an index that expired already (every device would refuse it, with
    ///   this message); signing and I/O errors.
    public func publish(to output: String, signers: [Signer], now: Int64 = WallClock.now()) throws(FerryError) {
        try TrustPolicy.checkExpiry(expires, of: "the update index", at: now)
        let bytes = serialized()
        for (number, signer) in signers.enumerated() {
            let signature = try CMS.sign(content: bytes, certificatePath: signer.certificate, keyPath: signer.key)
            try DurableFile.write(signature, to: "\(output).\(number + 1).p7s")
        }
        var stale = signers.count + 1
        while TextFile.exists("\(output).\(stale).p7s") {
            try FileSystem.remove("\(output).\(stale).p7s")
            stale += 1
        }
        try DurableFile.write(bytes, to: output)
    }
}
