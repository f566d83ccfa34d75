import FerrySystem
import FoundationEssentials

/// A JSON document as a tree: lets Ferry read configuration strictly (unknown keys are errors)
/// and state leniently (unknown keys written by a newer Ferry are kept, never dropped).
///
/// Parsing and printing go through FoundationEssentials' JSONDecoder/JSONEncoder.
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

    /// The deepest nesting Ferry accepts; deeper documents are refused before decoding.
    public static let maximumDepth = 64

    /// Parses JSON bytes.
    /// - Throws: `FerryError` with `code`, naming `what` and the parser's reason (line and column).
    public static func parse(_ bytes: [UInt8], what: String, code: FerryError.Code) throws(FerryError) -> JSONValue {
        guard nestingDepth(bytes) <= maximumDepth else {
            throw FerryError(code: code, message: "\(what) is nested deeper than \(maximumDepth) levels")
        }
        if let duplicate = firstDuplicateKey(bytes) {
            // The decoder would silently keep one of them: ambiguity is refused instead.
            throw FerryError(code: code, message: "\(what) has the key '\(duplicate)' twice in one object")
        }
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            // The decoder says only that the data is not valid JSON: find where and why.
            if let syntax = JSONSyntaxScanner.firstError(in: bytes) {
                throw FerryError(code: code, message: "\(what) is not valid JSON: \(syntax.description)")
            }
            var reason = "\(error)"
            if case DecodingError.dataCorrupted(let context) = error {
                reason = context.underlyingError.map { "\($0)" } ?? context.debugDescription
            }
            throw FerryError(code: code, message: "\(what) is not valid JSON: \(Self.oneLine(reason))")
        }
    }

    /// The deepest bracket nesting outside strings (a bound checked before recursive decoding).
    static func nestingDepth(_ bytes: [UInt8]) -> Int {
        var depth = 0
        var deepest = 0
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                deepest = max(deepest, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }

    /// The first key that appears twice in one object (compared as written), scanning the raw
    /// text; nil when there is none. Malformed text is left to the decoder to report.
    static func firstDuplicateKey(_ bytes: [UInt8]) -> String? {
        var stack: [(keys: Set<[UInt8]>, isObject: Bool, expectKey: Bool)] = []
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "{"): stack.append((keys: [], isObject: true, expectKey: true))
            case UInt8(ascii: "["): stack.append((keys: [], isObject: false, expectKey: false))
            case UInt8(ascii: "}"), UInt8(ascii: "]"): if !stack.isEmpty { stack.removeLast() }
            case UInt8(ascii: ","):
                if let last = stack.indices.last, stack[last].isObject { stack[last].expectKey = true }
            case UInt8(ascii: "\""):
                var end = index + 1
                while end < bytes.count && bytes[end] != UInt8(ascii: "\"") {
                    end += bytes[end] == UInt8(ascii: "\\") ? 2 : 1
                }
                if let last = stack.indices.last, stack[last].isObject, stack[last].expectKey {
                    let key = Array(bytes[(index + 1)..<min(end, bytes.count)])
                    if !stack[last].keys.insert(key).inserted { return String(decoding: key, as: UTF8.self) }
                    stack[last].expectKey = false
                }
                index = end
            default: break
            }
            index += 1
        }
        return nil
    }

    private static func oneLine(_ text: String) -> String {
        // Keep the one-line promise whatever the decoder puts in its description.
        let line = text.split(separator: "\n").first.map(String.init) ?? text
        return line.count > 200 ? String(line.prefix(200)) + "…" : line
    }

    /// Serializes as pretty-printed JSON (two-space indent, sorted keys) with a trailing newline.
    public func serialized() -> [UInt8] {
        var output: [UInt8] = []
        write(to: &output, indent: 0, pretty: true)
        output.append(UInt8(ascii: "\n"))
        return output
    }

    /// Serializes on one line with sorted keys (canonical: the same tree always gives the same bytes).
    public func compact() -> [UInt8] {
        var output: [UInt8] = []
        write(to: &output, indent: 0, pretty: false)
        return output
    }

    private func write(to output: inout [UInt8], indent: Int, pretty: Bool) {
        func newline(_ level: Int) {
            guard pretty else { return }
            output.append(UInt8(ascii: "\n"))
            output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: level * 2))
        }
        switch self {
        case .null: output.append(contentsOf: Array("null".utf8))
        case .bool(let value): output.append(contentsOf: Array((value ? "true" : "false").utf8))
        case .number(let value):
            if value == value.rounded(), abs(value) < 9.0e15 {
                output.append(contentsOf: Array(String(Int64(value)).utf8))
            } else {
                output.append(contentsOf: Array("\(value)".utf8))
            }
        case .string(let value): Self.writeString(value, to: &output)
        case .array(let items):
            if items.isEmpty {
                output.append(contentsOf: Array("[]".utf8))
                return
            }
            output.append(UInt8(ascii: "["))
            for (position, item) in items.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(indent + 1)
                item.write(to: &output, indent: indent + 1, pretty: pretty)
            }
            newline(indent)
            output.append(UInt8(ascii: "]"))
        case .object(let members):
            if members.isEmpty {
                output.append(contentsOf: Array("{}".utf8))
                return
            }
            output.append(UInt8(ascii: "{"))
            for (position, key) in members.keys.sorted().enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                newline(indent + 1)
                Self.writeString(key, to: &output)
                output.append(UInt8(ascii: ":"))
                if pretty { output.append(UInt8(ascii: " ")) }
                members[key]!.write(to: &output, indent: indent + 1, pretty: pretty)
            }
            newline(indent)
            output.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ text: String, to output: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        output.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): output.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): output.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: output.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: output.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: output.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x00..<0x20:
                output.append(contentsOf: Array("\\u00".utf8))
                output.append(hex[Int(byte >> 4)])
                output.append(hex[Int(byte & 0xf)])
            default: output.append(byte)
            }
        }
        output.append(UInt8(ascii: "\""))
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
    public var typeName: String {
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
public struct StrictObject {
    public let path: String
    public let file: String
    /// The error code for problems in this document (configuration or bundle).
    public let code: FerryError.Code
    private let members: [String: JSONValue]
    private var seen: Set<String> = []

    public init(_ value: JSONValue, path: String, file: String, code: FerryError.Code = .configurationInvalid)
        throws(FerryError)
    {
        guard case .object(let members) = value else {
            throw FerryError(
                code: code,
                message: "\(file): \(path.isEmpty ? "the document" : path) must be an object, not \(value.typeName)")
        }
        self.members = members
        self.path = path
        self.file = file
        self.code = code
    }

    public func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    public func invalid(_ key: String, _ problem: String) -> FerryError {
        FerryError(code: code, message: "\(file): \(keyPath(key)): \(problem)")
    }

    public var keys: [String] { members.keys.sorted() }

    public mutating func raw(_ key: String) -> JSONValue? {
        seen.insert(key)
        guard let value = members[key], value != .null else { return nil }
        return value
    }

    public mutating func string(_ key: String) throws(FerryError) -> String? {
        guard let value = raw(key) else { return nil }
        guard case .string(let text) = value else { throw invalid(key, "must be a string, not \(value.typeName)") }
        guard !text.isEmpty else { throw invalid(key, "must not be empty") }
        return text
    }

    public mutating func requiredString(_ key: String) throws(FerryError) -> String {
        guard let text = try string(key) else { throw invalid(key, "is required") }
        return text
    }

    public mutating func bool(_ key: String) throws(FerryError) -> Bool? {
        guard let value = raw(key) else { return nil }
        guard case .bool(let flag) = value else { throw invalid(key, "must be true or false, not \(value.typeName)") }
        return flag
    }

    public mutating func integer(_ key: String, in range: ClosedRange<Int64>) throws(FerryError) -> Int64? {
        guard let value = raw(key) else { return nil }
        guard let number = value.int64Value else { throw invalid(key, "must be a whole number, not \(value.typeName)") }
        guard range.contains(number) else {
            throw invalid(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    public mutating func number(_ key: String, in range: ClosedRange<Double>) throws(FerryError) -> Double? {
        guard let value = raw(key) else { return nil }
        guard case .number(let number) = value else { throw invalid(key, "must be a number, not \(value.typeName)") }
        guard range.contains(number) else {
            throw invalid(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    public mutating func stringArray(_ key: String) throws(FerryError) -> [String] {
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

    public mutating func object(_ key: String) throws(FerryError) -> StrictObject? {
        guard let value = raw(key) else { return nil }
        return try StrictObject(value, path: keyPath(key), file: file, code: code)
    }

    /// Fails on the first key that was never read: unknown keys are errors.
    public func finish() throws(FerryError) {
        if let unknown = members.keys.sorted().first(where: { !seen.contains($0) }) {
            throw FerryError(code: code, message: "\(file): \(keyPath(unknown)): unknown key")
        }
    }
}

extension JSONValue {
    /// Applies `patch` as a JSON merge patch (RFC 7386): objects merge key by key, `null` removes a
    /// key, anything else replaces.
    public func mergePatched(with patch: JSONValue) -> JSONValue {
        guard case .object(let changes) = patch else { return patch }
        var result: [String: JSONValue]
        if case .object(let current) = self { result = current } else { result = [:] }
        for (key, value) in changes {
            if value == .null {
                result[key] = nil
            } else {
                result[key] = (result[key] ?? .null).mergePatched(with: value)
            }
        }
        return .object(result)
    }
}
