internal import CXML2

/// XML documents checked with libxml2: well-formed (no network access, no external entities, no
/// output of libxml2's own) and, when a schema is given, valid against that XSD. The one module
/// that imports libxml2; settings updates use it (FerryCore's `SettingsStore`).
public enum XMLCheck {
    public enum Problem: Error, Equatable, Sendable {
        /// The document is not well-formed XML (libxml2's message).
        case notWellFormed(String)
        /// The schema file cannot be read.
        case schemaUnreadable
        /// The schema file is not a valid XSD.
        case schemaInvalid
        /// The document does not validate against the schema (libxml2's message).
        case invalid(String)
        /// libxml2 could not allocate what it needs.
        case resources
    }

    /// Checks `bytes`; nil when the document is well-formed and (with `schema`, an XSD path) valid.
    public static func problem(in bytes: [UInt8], schema: String?) -> Problem? {
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        let document = bytes.withUnsafeBufferPointer { buffer -> xmlDocPtr? in
            guard let base = buffer.baseAddress else { return nil }
            return base.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                xmlReadMemory($0, Int32(buffer.count), "document.xml", nil, options)
            }
        }
        guard let document else { return .notWellFormed(lastError ?? "not well-formed") }
        defer { xmlFreeDoc(document) }
        guard let schema else { return nil }
        guard let parser = xmlSchemaNewParserCtxt(schema) else { return .schemaUnreadable }
        defer { xmlSchemaFreeParserCtxt(parser) }
        xmlSchemaSetParserStructuredErrors(parser, { _, _ in }, nil)
        guard let parsed = xmlSchemaParse(parser) else { return .schemaInvalid }
        defer { xmlSchemaFree(parsed) }
        guard let validation = xmlSchemaNewValidCtxt(parsed) else { return .resources }
        defer { xmlSchemaFreeValidCtxt(validation) }
        // Errors are reported in the caller's one line, not printed by libxml2 (it still records the last one).
        xmlSchemaSetValidStructuredErrors(validation, { _, _ in }, nil)
        guard xmlSchemaValidateDoc(validation, document) == 0 else { return .invalid(lastError ?? "invalid") }
        return nil
    }

    /// libxml2's last error message, without its trailing newlines.
    private static var lastError: String? {
        guard let error = xmlGetLastError(), let message = error.pointee.message else { return nil }
        var text = String(cString: message)
        while text.last == "\n" { text.removeLast() }
        return text
    }
}
