import FerryCore
import FerryJSON
import FerrySystem

/// Settings documents (JSON replaced or merge-patched, XML checked by libxml2).
enum SettingsTargets {
    /// The first byte splits the rest into an active document and a merge patch (at
    /// `byte * count / 256`). Each is parsed as a settings update parses it; the merged result
    /// must serialize and parse back to itself, and patching must be idempotent (RFC 7386).
    @Sendable static func json(_ input: UnsafeRawBufferPointer) {
        guard let split = input.first else { return }
        let rest = Array(input.dropFirst())
        let cut = Int(split) * rest.count / 256
        let document = Array(rest[..<cut])
        let patchBytes = Array(rest[cut...])
        guard let patch = try? JSONValue.parse(patchBytes, what: "patch", code: .bundleInvalid) else {
            _ = try? JSONValue.parse(rest, what: "document", code: .bundleInvalid)
            return
        }
        roundTrip(patch)
        guard let current = try? JSONValue.parse(document, what: "document", code: .bundleInvalid) else { return }
        roundTrip(current)
        let merged = current.mergePatched(with: patch)
        roundTrip(merged)
        guard merged.mergePatched(with: patch) == merged else {
            violated("settings-json", "a merge patch applied twice changes the result")
        }
    }

    private static func roundTrip(_ value: JSONValue) {
        for bytes in [value.serialized(), value.compact()] {
            do {
                guard try JSONValue.parse(bytes, what: "serialized", code: .bundleInvalid) == value else {
                    violated("settings-json", "a document reads back differently after serialization")
                }
            } catch {
                violated("settings-json", "a serialized document is refused: \(error.message)")
            }
        }
    }

    /// An XML settings document as a settings update checks it; with an odd first byte also
    /// against a small XSD (the rest is the document).
    @Sendable static func xml(_ input: UnsafeRawBufferPointer) {
        guard let first = input.first else { return }
        let store = first & 1 != 0 ? withSchema : plain
        _ = try? store.candidate(name: "fuzz.xml", format: "xml", mergePatch: false, incoming: Array(input.dropFirst()))
    }

    private static let directory = FuzzScratch.directory("settings")
    private static var plain: SettingsStore { SettingsStore(directory: directory, configuration: plainConfiguration) }
    private static var withSchema: SettingsStore {
        SettingsStore(directory: directory, configuration: schemaConfiguration)
    }
    private static let plainConfiguration = configuration(schemas: "{}")
    private static let schemaConfiguration = configuration(schemas: #"{"fuzz.xml": "\#(schema)"}"#)
    private static let schema: String = {
        let path = "\(directory)/fuzz.xsd"
        do throws(FerryError) { try DurableFile.write(xsd, to: path) } catch {
            fatalError("fuzz target settings-xml: \(error.message)")
        }
        return path
    }()

    /// The settings part of a system configuration (no validation command, no health check).
    private static func configuration(schemas: String) -> SettingsConfiguration {
        let text = """
            {"compatible": "fuzz-board", "bootloader": {"type": "custom", "command": "/bin/true"},
             "slots": {"rootfs_a": {"class": "rootfs", "bootname": "A", "device": "/dev/null"},
                       "rootfs_b": {"class": "rootfs", "bootname": "B", "device": "/dev/zero"}},
             "settingsStore": "\(directory)", "settings": {"schemas": \(schemas)}}
            """
        do { return try SystemConfiguration.parse(Array(text.utf8), path: "\(directory)/system.json").settings } catch {
            fatalError("fuzz target settings-xml: \(error.message)")
        }
    }

    /// The schema of the corpus' carrier profiles.
    static let xsd = """
        <?xml version="1.0" encoding="UTF-8"?>
        <xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
          <xs:element name="carrier">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="apn" type="xs:string" maxOccurs="4"/>
                <xs:element name="mtu" type="xs:positiveInteger" minOccurs="0"/>
              </xs:sequence>
              <xs:attribute name="name" type="xs:string" use="required"/>
            </xs:complexType>
          </xs:element>
        </xs:schema>

        """
}
