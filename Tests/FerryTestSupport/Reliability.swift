import FerryJSON
import FerrySystem
import SystemPackage

/// The reliability profile (tools/reliability): `FERRY_RELIABILITY_PROFILE=long` for the long
/// runs, otherwise the short ones that every test run does.
public enum ReliabilityProfile {
    public static var isLong: Bool { ProcessEnvironment.variables["FERRY_RELIABILITY_PROFILE"] == "long" }
    public static var name: String { isLong ? "long" : "short" }

    /// Prints `summary` and, when `FERRY_RELIABILITY_OUT` names a file, appends `fields` to it
    /// as one JSON line (tools/reliability turns them into docs/reliability.md).
    public static func report(_ summary: String, _ fields: [String: JSONValue]) throws {
        print(summary)
        guard let output = ProcessEnvironment.variables["FERRY_RELIABILITY_OUT"] else { return }
        var object = fields
        object["profile"] = .string(name)
        // One append of one line: suites that run in parallel do not lose each other's lines.
        let fd = try FileDescriptor.open(
            FilePath(output), .writeOnly, options: [.append, .create],
            permissions: [.ownerReadWrite, .groupRead, .otherRead])
        defer { try? fd.close() }
        _ = try fd.writeAll(JSONValue.object(object).serialized() + [0x0a])
    }
}
