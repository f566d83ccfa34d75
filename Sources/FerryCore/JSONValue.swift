import FerrySystem
import FoundationEssentials

/// A JSON document as a tree: lets Ferry read configuration strictly (unknown keys are errors)
/// and state leniently (unknown keys written by a newer Ferry are kept, never dropped).
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value == value.rounded(), abs(value) < 9.0e15 {
                try container.encode(Int64(value))
            } else {
                try container.encode(value)
            }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses JSON bytes.
    /// - Throws: `FerryError` with `code`, naming `what` and the parser's reason (line and column).
    public static func parse(_ bytes: [UInt8], what: String, code: FerryError.Code) throws(FerryError) -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch let DecodingError.dataCorrupted(context) {
            let reason = (context.underlyingError as? any CustomDebugStringConvertible)?.debugDescription
                ?? context.underlyingError.map { "\($0)" } ?? context.debugDescription
            throw FerryError(code: code, message: "\(what) is not valid JSON: \(Self.shorten(reason))")
        } catch {
            throw FerryError(code: code, message: "\(what) is not valid JSON: \(error)")
        }
    }

    private static func shorten(_ text: String) -> String {
        // Keep the one-line promise whatever Foundation puts in its description.
        let line = text.split(separator: "\n").first.map(String.init) ?? text
        return line.count > 200 ? String(line.prefix(200)) + "…" : line
    }

    /// Serializes as pretty-printed JSON with sorted keys and a trailing newline.
    public func serialized() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding a JSONValue cannot fail: every case maps to a JSON value.
        let data = (try? encoder.encode(self)) ?? Data("null".utf8)
        return Array(data) + [UInt8(ascii: "\n")]
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var int64Value: Int64? {
        if case .number(let value) = self, value == value.rounded(), abs(value) < 9.0e15 { return Int64(value) }
        return nil
    }

    /// A short name of the JSON type, for error messages.
    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Reads one JSON object strictly: every key must be consumed, and type errors name the key path.
///
/// Used for the system configuration, where an unknown key is most likely a typo that would
/// otherwise silently change what Ferry does.
struct StrictObject {
    let path: String
    let file: String
    private let members: [String: JSONValue]
    private var seen: Set<String> = []

    init(_ value: JSONValue, path: String, file: String) throws(FerryError) {
        guard case .object(let members) = value else {
            throw FerryError(
                code: .configurationInvalid, message: "\(file): \(path.isEmpty ? "the document" : path) must be an object, not \(value.typeName)")
        }
        self.members = members
        self.path = path
        self.file = file
    }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func invalid(_ key: String, _ problem: String) -> FerryError {
        FerryError(code: .configurationInvalid, message: "\(file): \(keyPath(key)): \(problem)")
    }

    var keys: [String] { members.keys.sorted() }

    mutating func raw(_ key: String) -> JSONValue? {
        seen.insert(key)
        guard let value = members[key], value != .null else { return nil }
        return value
    }

    mutating func string(_ key: String) throws(FerryError) -> String? {
        guard let value = raw(key) else { return nil }
        guard case .string(let text) = value else { throw invalid(key, "must be a string, not \(value.typeName)") }
        guard !text.isEmpty else { throw invalid(key, "must not be empty") }
        return text
    }

    mutating func requiredString(_ key: String) throws(FerryError) -> String {
        guard let text = try string(key) else { throw invalid(key, "is required") }
        return text
    }

    mutating func bool(_ key: String) throws(FerryError) -> Bool? {
        guard let value = raw(key) else { return nil }
        guard case .bool(let flag) = value else { throw invalid(key, "must be true or false, not \(value.typeName)") }
        return flag
    }

    mutating func integer(_ key: String, in range: ClosedRange<Int64>) throws(FerryError) -> Int64? {
        guard let value = raw(key) else { return nil }
        guard let number = value.int64Value else { throw invalid(key, "must be a whole number, not \(value.typeName)") }
        guard range.contains(number) else {
            throw invalid(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    mutating func stringArray(_ key: String) throws(FerryError) -> [String] {
        guard let value = raw(key) else { return [] }
        guard case .array(let items) = value else { throw invalid(key, "must be an array of strings") }
        var result: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let text) = item, !text.isEmpty else {
                throw invalid("\(key)[\(index)]", "must be a non-empty string")
            }
            result.append(text)
        }
        return result
    }

    mutating func object(_ key: String) throws(FerryError) -> StrictObject? {
        guard let value = raw(key) else { return nil }
        return try StrictObject(value, path: keyPath(key), file: file)
    }

    /// Fails on the first key that was never read: unknown keys are errors.
    func finish() throws(FerryError) {
        if let unknown = members.keys.sorted().first(where: { !seen.contains($0) }) {
            throw FerryError(code: .configurationInvalid, message: "\(file): \(keyPath(unknown)): unknown key")
        }
    }
}
