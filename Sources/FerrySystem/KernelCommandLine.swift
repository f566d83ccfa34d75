/// The kernel command line (`/proc/cmdline`): which slot group the bootloader booted.
public struct KernelCommandLine: Sendable {
    /// The parameters, in order, as (name, value) pairs; a flag without `=` has a nil value.
    public var parameters: [(name: String, value: String?)]

    /// Parses a command line: space-separated, double quotes group a value containing spaces.
    public init(_ text: String) {
        var parameters: [(String, String?)] = []
        var current = ""
        var inQuotes = false
        var tokens: [String] = []
        for character in text {
            if character == "\"" {
                inQuotes.toggle()
            } else if (character == " " || character == "\n" || character == "\t") && !inQuotes {
                if !current.isEmpty { tokens.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { tokens.append(current) }
        for token in tokens {
            if let equals = token.firstIndex(of: "=") {
                parameters.append((String(token[..<equals]), String(token[token.index(after: equals)...])))
            } else {
                parameters.append((token, nil))
            }
        }
        self.parameters = parameters
    }

    /// Reads `/proc/cmdline` (or another file, for tests and sandboxes).
    public static func current(path: String = "/proc/cmdline") throws(FerryError) -> KernelCommandLine {
        KernelCommandLine(try TextFile.read(path))
    }

    /// The last value given for `name` (the kernel, too, lets the last one win).
    public func value(_ name: String) -> String? {
        parameters.last { $0.name == name }?.value ?? nil
    }

    /// The bootname the bootloader says it booted: `ferry.slot=`, else RAUC's `rauc.slot=`.
    public var bootedSlotName: String? { value("ferry.slot") ?? value("rauc.slot") }

    /// The `root=` parameter (a path or a `PARTUUID=`/`PARTLABEL=`/`UUID=`/`LABEL=` tag).
    public var rootDevice: String? { value("root") }
}
