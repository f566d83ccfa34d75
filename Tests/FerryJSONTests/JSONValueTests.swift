import FerryJSON
import FerrySystem
import FerryTestSupport
import Testing

/// Ferry's own JSON parser and serializer (RFC 8259, strict).
@Suite struct JSONValueTests {
    func parse(_ text: String) throws -> JSONValue {
        try JSONValue.parse(Array(text.utf8), what: "test", code: .internal)
    }

    @Test func parsesEveryKindOfValue() throws {
        let value = try parse(
            #" { "a": [1, -2.5, 3e2, 0, 1E-2], "b": {"c": null, "d": true, "e": false}, "s": "x\"\\\/\n\u00e9\ud83d\ude00" } "#
        )
        #expect(
            value
                == .object([
                    "a": .array([.number(1), .number(-2.5), .number(300), .number(0), .number(0.01)]),
                    "b": .object(["c": .null, "d": .bool(true), "e": .bool(false)]),
                    "s": .string("x\"\\/\né😀"),
                ]))
    }

    @Test(arguments: ["", "{", "{\"a\" 1}", "{a:1}", "01", "tru", "[1 2]", "\"unterminated", "{\"a\":1} x"])
    func rejectsInvalidDocumentsWithAOneLineError(_ text: String) {
        let error = #expect(throws: FerryError.self) { try parse(text) }
        #expect(error?.code == .internal)
        #expect(error?.message.contains("\n") == false)
    }

    /// The decoder of FoundationEssentials gives no reason: Ferry's message names the line,
    /// the column and what is wrong there.
    @Test(arguments: [
        ("", "line 1, column 1: the document is empty"),
        ("{\n  \"a\": 1,\n  \"b\" 2\n}", "line 3, column 7: expected ':' after the key, found '2'"),
        ("[1, 2", "line 1, column 6: the document ends inside an array"),
        ("{\"a\": tru}", "line 1, column 7: unexpected 'tru' where a value was expected (strings need double quotes)"),
        ("{a: 1}", "line 1, column 2: expected a key in double quotes, found 'a'"),
        ("[01]", "line 1, column 3: a number must not start with 0 (leading zeros)"),
        ("\"a\tb\"", "line 1, column 3: a control character (0x9) inside a string; escape it"),
        ("{\"a\": 1} x", "line 1, column 10: unexpected 'x' after the end of the document"),
        // (A trailing comma is accepted, as by the decoder: the fault reported is the real one.)
        ("[1,]\n{", "line 2, column 1: unexpected '{' after the end of the document"),
    ])
    func malformedDocumentsAreReportedWithLineAndColumn(_ text: String, _ reason: String) {
        let error = #expect(throws: FerryError.self) { try parse(text) }
        #expect(error?.message == "test is not valid JSON: \(reason)", "\(error?.message ?? "no error")")
    }

    @Test func refusesDuplicateKeys() throws {
        for text in [#"{"a": 1, "a": 2}"#, #"{"x": {"b": 1, "c": [1, {"k": 1}], "b": 3}}"#, #"[{"q": 1, "q": 1}]"#] {
            let error = #expect(throws: FerryError.self) { try parse(text) }
            #expect(error?.message.contains("twice") == true, "\(text)")
        }
        // The same key in different objects, and key-like strings as values, are fine.
        _ = try parse(#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}], "c": "a", "d": ["a", "a"], "e\"": 1, "e": 2}"#)
    }

    @Test func refusesDeepNesting() {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(throws: FerryError.self) { try parse(deep) }
        let fine = "[\"[[[[\"," + String(repeating: "[", count: 60) + String(repeating: "]", count: 60) + "]"
        #expect(throws: Never.self) { try parse(fine) }
    }

    @Test func serializationRoundTripsAndIsCanonical() throws {
        let values: [JSONValue] = [
            .object(["z": .number(1), "a": .array([.string("é\n\u{1}\""), .null, .bool(false)]), "m": .object([:])]),
            .array([]), .number(123_456_789_012), .number(-0.25), .string(""),
        ]
        for value in values {
            #expect(try JSONValue.parse(value.serialized(), what: "t", code: .internal) == value)
            #expect(try JSONValue.parse(value.compact(), what: "t", code: .internal) == value)
        }
        #expect(value0Compact(values[0]) == #"{"a":["é\n\u0001\"",null,false],"m":{},"z":1}"#)
    }

    func value0Compact(_ value: JSONValue) -> String { String(decoding: value.compact(), as: UTF8.self) }

    /// Differential check against Python's json module on seeded random documents: both must
    /// agree on the value (Python re-serializes what Ferry wrote; Ferry parses what Python wrote).
    @Test func agreesWithPython() async throws {
        guard TestEnvironment.hasCommand("python3") else { return }
        try await withTemporaryDirectory { dir in
            var generator = SeededGenerator(seed: 2026)
            for round in 0..<40 {
                let value = randomValue(&generator, depth: 0)
                let path = "\(dir)/doc\(round).json"
                try makeFile(path, bytes: value.serialized())
                let python = try Shell.check([
                    "python3", "-c",
                    "import json,sys; print(json.dumps(json.load(open(sys.argv[1])), sort_keys=True, ensure_ascii=False))",
                    path,
                ])
                #expect(try parse(python) == value, "round \(round)")
            }
        }
    }

    func randomValue(_ generator: inout SeededGenerator, depth: Int) -> JSONValue {
        switch generator.next() % (depth > 3 ? 4 : 6) {
        case 0: return .null
        case 1: return .bool(generator.next() % 2 == 0)
        case 2: return .number(Double(Int64(bitPattern: generator.next()) >> 20))
        case 3:
            let alphabet = Array("aé\"\\\n\t/ z😀\u{1}")
            return .string(
                String(
                    (0..<Int(generator.next() % 12)).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))]
                    }))
        case 4: return .array((0..<Int(generator.next() % 4)).map { _ in randomValue(&generator, depth: depth + 1) })
        default:
            var members: [String: JSONValue] = [:]
            for index in 0..<Int(generator.next() % 4) {
                members["k\(index)\(generator.next() % 10)"] = randomValue(&generator, depth: depth + 1)
            }
            return .object(members)
        }
    }
}

/// JSON merge patch (RFC 7386), with the RFC's own examples.
@Suite struct MergePatchTests {
    static func json(_ text: String) throws -> JSONValue {
        try JSONValue.parse(Array(text.utf8), what: "test", code: .internal)
    }

    @Test(arguments: [
        (#"{"a":"b"}"#, #"{"a":"c"}"#, #"{"a":"c"}"#),
        (#"{"a":"b"}"#, #"{"b":"c"}"#, #"{"a":"b","b":"c"}"#),
        (#"{"a":"b"}"#, #"{"a":null}"#, #"{}"#),
        (#"{"a":"b","b":"c"}"#, #"{"a":null}"#, #"{"b":"c"}"#),
        (#"{"a":["b"]}"#, #"{"a":"c"}"#, #"{"a":"c"}"#),
        (#"{"a":"c"}"#, #"{"a":["b"]}"#, #"{"a":["b"]}"#),
        (#"{"a":{"b":"c"}}"#, #"{"a":{"b":"d","c":null}}"#, #"{"a":{"b":"d"}}"#),
        (#"{"a":[{"b":"c"}]}"#, #"{"a":[1]}"#, #"{"a":[1]}"#),
        (#"["a","b"]"#, #"["c","d"]"#, #"["c","d"]"#),
        (#"{"a":"b"}"#, #"["c"]"#, #"["c"]"#),
        (#"{"a":"foo"}"#, "null", "null"),
        (#"{"a":"foo"}"#, #""bar""#, #""bar""#),
        (#"{"e":null}"#, #"{"a":1}"#, #"{"e":null,"a":1}"#),
        (#"[1,2]"#, #"{"a":"b","c":null}"#, #"{"a":"b"}"#),
        (#"{}"#, #"{"a":{"bb":{"ccc":null}}}"#, #"{"a":{"bb":{}}}"#),
    ])
    func theRFCExamples(_ target: String, _ patch: String, _ result: String) throws {
        #expect(try Self.json(target).mergePatched(with: Self.json(patch)) == Self.json(result))
    }
}
