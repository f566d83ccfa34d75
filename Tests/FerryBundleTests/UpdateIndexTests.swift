import FerryBundle
import FerryCrypto
import FerrySystem
import FerryTestSupport
import Testing

/// The update index's strict parser: a round trip, and each malformed index refused with its code.
@Suite struct UpdateIndexTests {
    static let digest = SHA256Hasher.hash([UInt8]("bundle".utf8))

    static func index() -> UpdateIndex {
        UpdateIndex(
            serial: 9, created: 1_780_000_000, expires: 1_790_000_000,
            entries: [
                UpdateIndex.Entry(
                    compatible: "board", version: SemanticVersion("1.2.0")!, securityVersion: 3,
                    url: "delta-1.2.0.ferry", size: 4096,
                    sha256: digest, manifestSHA256: digest,
                    payloads: [
                        UpdateIndex.PayloadSummary(type: "delta", target: "rootfs", sourceSHA256: digest),
                        UpdateIndex.PayloadSummary(type: "image", target: "modem"),
                    ])
            ])
    }

    @Test func roundTrips() throws {
        let index = Self.index()
        #expect(try UpdateIndex.parse(index.serialized()) == index)
        #expect(index.entries[0].isDelta)
    }

    static func edited(_ from: String, _ to: String) -> [UInt8] {
        Array(String(decoding: index().serialized(), as: UTF8.self).replacing(from, with: to).utf8)
    }

    @Test(arguments: [
        ("an unknown key", "\"serial\"", "\"extra\" : 1, \"serial\"", FerryError.Code.bundleInvalid),
        ("another format version", "\"formatVersion\": 2", "\"formatVersion\": 3", .bundleInvalid),
        ("format 1 (no manifest hashes)", "\"formatVersion\": 2", "\"formatVersion\": 1", .bundleInvalid),
        ("an entry without its manifest hash", "\"manifestSha256\"", "\"manifest\"", .bundleInvalid),
        ("a plain HTTP URL", "\"delta-1.2.0.ferry\"", "\"http://example.com/x.ferry\"", .bundleInvalid),
        ("a delta without its source", "\"sourceSha256\"", "\"source\"", .bundleInvalid),
        ("a bad version", "\"1.2.0\"", "\"1.2\"", .bundleInvalid),
        ("a bad time", "Z\"", "\"", .bundleInvalid),
        ("a negative serial", "\"serial\": 9", "\"serial\": -1", .bundleInvalid),
    ])
    func malformedIndexesAreRefused(_ name: String, _ from: String, _ to: String, _ code: FerryError.Code) {
        let bytes = Self.edited(from, to)
        #expect(bytes != Self.index().serialized(), "\(name): the edit did not apply")
        expectFerryError(code) { _ = try UpdateIndex.parse(bytes) }
    }

    @Test func anOversizedIndexIsRefusedBeforeParsing() {
        expectFerryError(.limitExceeded) {
            _ = try UpdateIndex.parse([UInt8](repeating: 0x20, count: UpdateIndex.maximumSize + 1))
        }
    }

    /// An entry binds one manifest: another one is refused by its hash, and a manifest that says
    /// something other than its entry (version, compatible, security version, delta source)
    /// is refused too (`.notIndexed`).
    @Test func anEntryRefusesEveryOtherManifest() throws {
        let source = SHA256Hasher.hash([UInt8]("factory image".utf8))
        let manifest = Manifest(
            compatible: "board", version: SemanticVersion("1.2.0")!, securityVersion: 3, buildTime: 1_780_000_000,
            expires: nil,
            description: nil, keyring: nil,
            payloads: [
                Manifest.Payload(
                    kind: .delta(
                        Manifest.DeltaInfo(
                            sourceSize: 1, sourceSHA256: source, targetSize: 1, targetSHA256: source, sourceChecks: [])),
                    target: "rootfs", member: "payload.0", compression: .none, size: 1, sha256: source, storedSize: 1,
                    chunkSize: 1 << 20, chunks: [])
            ])
        // (Any bytes do: the entry binds them by hash.)
        let bytes = Array("the manifest as stored".utf8)
        let entry = UpdateIndex.entry(for: manifest, manifestBytes: bytes, url: "b.ferry", size: 1, sha256: Self.digest)
        try entry.checkManifest(bytes, bundle: "b.ferry")
        try entry.checkManifest(manifest, bundle: "b.ferry")
        expectFerryError(.notIndexed) { try entry.checkManifest(bytes + [0x20], bundle: "b.ferry") }

        var other = manifest
        other.version = SemanticVersion("1.1.0")!
        expectFerryError(.notIndexed) { try entry.checkManifest(other, bundle: "b.ferry") }
        other = manifest
        other.compatible = "other-board"
        expectFerryError(.notIndexed) { try entry.checkManifest(other, bundle: "b.ferry") }
        other = manifest
        other.securityVersion = 2
        expectFerryError(.notIndexed) { try entry.checkManifest(other, bundle: "b.ferry") }
        other = manifest
        other.payloads[0].delta?.sourceSHA256 = Self.digest
        expectFerryError(.notIndexed) { try entry.checkManifest(other, bundle: "b.ferry") }
        other = manifest
        other.payloads = []
        expectFerryError(.notIndexed) { try entry.checkManifest(other, bundle: "b.ferry") }
    }
}
