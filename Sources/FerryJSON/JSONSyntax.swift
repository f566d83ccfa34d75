/// Where a JSON text first breaks the grammar (RFC 8259), for error messages: the decoder of
/// FoundationEssentials says only "The given data was not valid JSON.", which tells an operator
/// nothing about a 200-line settings document.
///
/// A scanner, not a parser: it builds nothing and stops at the first fault.
struct JSONSyntaxError: Equatable {
    var line: Int
    var column: Int
    var reason: String

    var description: String { "line \(line), column \(column): \(reason)" }
}

struct JSONSyntaxScanner {
    private let bytes: [UInt8]
    private var index = 0

    private init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The first syntax fault of `bytes`, or nil when it is one well-formed JSON value.
    static func firstError(in bytes: [UInt8]) -> JSONSyntaxError? {
        var scanner = JSONSyntaxScanner(bytes)
        return scanner.scanDocument()
    }

    private mutating func scanDocument() -> JSONSyntaxError? {
        skipWhitespace()
        guard index < bytes.count else { return fault("the document is empty") }
        if let error = scanValue(depth: 0) { return error }
        skipWhitespace()
        guard index == bytes.count else {
            return fault("unexpected \(describe(bytes[index])) after the end of the document")
        }
        return nil
    }

    private mutating func scanValue(depth: Int) -> JSONSyntaxError? {
        guard depth <= JSONValue.maximumDepth else {
            return fault("nested deeper than \(JSONValue.maximumDepth) levels")
        }
        guard index < bytes.count else { return fault("the document ends where a value was expected") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return scanObject(depth: depth)
        case UInt8(ascii: "["): return scanArray(depth: depth)
        case UInt8(ascii: "\""): return scanString()
        case UInt8(ascii: "t"): return scanWord("true")
        case UInt8(ascii: "f"): return scanWord("false")
        case UInt8(ascii: "n"): return scanWord("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return scanNumber()
        default: return fault("unexpected \(describe(bytes[index])) where a value was expected")
        }
    }

    private mutating func scanObject(depth: Int) -> JSONSyntaxError? {
        index += 1
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return nil
        }
        while true {
            guard index < bytes.count else { return fault("the document ends inside an object") }
            guard bytes[index] == UInt8(ascii: "\"") else {
                return fault("expected a key in double quotes, found \(describe(bytes[index]))")
            }
            if let error = scanString() { return error }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                return fault(
                    index < bytes.count
                        ? "expected ':' after the key, found \(describe(bytes[index]))"
                        : "the document ends inside an object")
            }
            index += 1
            skipWhitespace()
            if let error = scanValue(depth: depth + 1) { return error }
            skipWhitespace()
            guard index < bytes.count else { return fault("the document ends inside an object") }
            switch bytes[index] {
            case UInt8(ascii: ","):
                index += 1
                skipWhitespace()
                // A trailing comma: FoundationEssentials' decoder accepts it, so this does too.
                if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return nil
                }
            case UInt8(ascii: "}"):
                index += 1
                return nil
            default: return fault("expected ',' or '}' in an object, found \(describe(bytes[index]))")
            }
        }
    }

    private mutating func scanArray(depth: Int) -> JSONSyntaxError? {
        index += 1
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return nil
        }
        while true {
            if let error = scanValue(depth: depth + 1) { return error }
            skipWhitespace()
            guard index < bytes.count else { return fault("the document ends inside an array") }
            switch bytes[index] {
            case UInt8(ascii: ","):
                index += 1
                skipWhitespace()
                if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    return nil
                }
            case UInt8(ascii: "]"):
                index += 1
                return nil
            default: return fault("expected ',' or ']' in an array, found \(describe(bytes[index]))")
            }
        }
    }

    private mutating func scanString() -> JSONSyntaxError? {
        index += 1
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return nil
            case UInt8(ascii: "\\"):
                index += 1
                guard index < bytes.count else { break }
                switch bytes[index] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"),
                    UInt8(ascii: "r"), UInt8(ascii: "t"):
                    index += 1
                case UInt8(ascii: "u"):
                    let digits = bytes[(index + 1)..<min(index + 5, bytes.count)]
                    guard digits.count == 4, digits.allSatisfy({ Self.isHexDigit($0) }) else {
                        return fault("'\\u' must be followed by four hex digits")
                    }
                    index += 5
                default: return fault("unknown escape '\\\(Character(Unicode.Scalar(bytes[index])))' in a string")
                }
            case 0..<0x20: return fault("a control character (0x\(String(byte, radix: 16))) inside a string; escape it")
            default: index += 1
            }
        }
        return fault("the document ends inside a string")
    }

    private mutating func scanWord(_ word: String) -> JSONSyntaxError? {
        let expected = Array(word.utf8)
        guard bytes[index...].starts(with: expected) else {
            var end = index
            while end < bytes.count, end - index < 16, Self.isWordByte(bytes[end]) { end += 1 }
            let found = String(decoding: bytes[index..<max(end, index + 1)], as: UTF8.self)
            return fault("unexpected '\(found)' where a value was expected (strings need double quotes)")
        }
        index += expected.count
        return nil
    }

    private mutating func scanNumber() -> JSONSyntaxError? {
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, Self.isDigit(bytes[index]) else { return fault("a '-' must be followed by a digit") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if index < bytes.count, Self.isDigit(bytes[index]) {
                return fault("a number must not start with 0 (leading zeros)")
            }
        } else {
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, Self.isDigit(bytes[index]) else {
                return fault("a '.' in a number must be followed by a digit")
            }
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            guard index < bytes.count, Self.isDigit(bytes[index]) else { return fault("an exponent must have digits") }
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        }
        return nil
    }

    private mutating func skipWhitespace() {
        while index < bytes.count,
            bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09
        {
            index += 1
        }
    }

    /// A fault at the current position (lines and columns count from 1; columns in bytes).
    private func fault(_ reason: String) -> JSONSyntaxError {
        var line = 1
        var lineStart = 0
        for position in 0..<min(index, bytes.count) where bytes[position] == 0x0A {
            line += 1
            lineStart = position + 1
        }
        return JSONSyntaxError(line: line, column: index - lineStart + 1, reason: reason)
    }

    private func describe(_ byte: UInt8) -> String {
        (0x21..<0x7F).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
    }

    private static func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }
    private static func isHexDigit(_ byte: UInt8) -> Bool {
        isDigit(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
    private static func isWordByte(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || isDigit(byte) || byte == UInt8(ascii: "_")
    }
}
