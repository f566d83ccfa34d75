import FerryBundle
import FerrySystem

/// Signed JSON documents: the bundle manifest (with its chunk tables) and the update index.
enum ManifestTargets {
    /// `manifest.json`; an accepted manifest must survive its canonical serialization (what the
    /// host signs is what the device reads).
    @Sendable static func manifest(_ input: UnsafeRawBufferPointer) {
        parseManifest(Array(input), target: "manifest")
    }

    /// A fixed, valid manifest whose `payloads` value is the input: mutations land in the payload
    /// list, the chunk tables and the delta source checks instead of the outer keys.
    @Sendable static func chunkTable(_ input: UnsafeRawBufferPointer) {
        let head = Array(
            #"{"formatVersion":1,"compatible":"fuzz-board","version":"1.0.0","buildTime":"2026-01-01T00:00:00Z","payloads":"#
                .utf8)
        parseManifest(head + Array(input) + Array("}".utf8), target: "chunk-table")
    }

    private static func parseManifest(_ bytes: [UInt8], target: String) {
        let manifest: Manifest
        do { manifest = try Manifest.parse(bytes) } catch { return }
        let serialized = manifest.serialized()
        do {
            let again = try Manifest.parse(serialized)
            guard again == manifest else { violated(target, "the manifest reads back differently after serialization") }
            guard again.serialized() == serialized else { violated(target, "serialization is not canonical") }
        } catch {
            violated(target, "an accepted manifest is refused after serialization: \(error.message)")
        }
        // What the installer derives from it.
        for payload in manifest.payloads {
            _ = payload.imageSize
            _ = payload.imageSHA256
        }
    }

    /// `index.json` of the update server; an accepted index must survive its serialization.
    @Sendable static func updateIndex(_ input: UnsafeRawBufferPointer) {
        let index: UpdateIndex
        do { index = try UpdateIndex.parse(Array(input)) } catch { return }
        do {
            let again = try UpdateIndex.parse(index.serialized())
            guard again == index else {
                violated("update-index", "the index reads back differently after serialization")
            }
        } catch {
            violated("update-index", "an accepted index is refused after serialization: \(error.message)")
        }
        for entry in index.entries { _ = entry.isDelta }
    }
}
