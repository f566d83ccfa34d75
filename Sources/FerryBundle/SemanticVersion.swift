import FerrySystem

/// A Semantic Versioning 2.0.0 version (`1.2.3`, `2.0.0-rc.1+build.5`), ordered by SemVer precedence.
public struct SemanticVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var major: UInt64
    public var minor: UInt64
    public var patch: UInt64
    /// Pre-release identifiers (`rc`, `1`); empty for a release.
    public var prerelease: [String]
    /// Build metadata (ignored for precedence).
    public var build: [String]

    /// Parses a SemVer string; nil when it is not one.
    public init?(_ text: String) {
        var core = Substring(text)
        var build: [String] = []
        if let plus = core.firstIndex(of: "+") {
            build = core[core.index(after: plus)...].split(separator: ".", omittingEmptySubsequences: false).map(
                String.init)
            core = core[..<plus]
            guard build.allSatisfy({ Self.isIdentifier($0) }) else { return nil }
        }
        var prerelease: [String] = []
        if let dash = core.firstIndex(of: "-") {
            prerelease = core[core.index(after: dash)...].split(separator: ".", omittingEmptySubsequences: false).map(
                String.init)
            core = core[..<dash]
            guard
                prerelease.allSatisfy({
                    Self.isIdentifier($0) && !($0.count > 1 && $0.hasPrefix("0") && $0.allSatisfy(\.isNumber))
                })
            else { return nil }
        }
        let parts = core.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let major = Self.numeric(parts[0]), let minor = Self.numeric(parts[1]),
            let patch = Self.numeric(parts[2])
        else { return nil }
        self.major = major
        self.minor = minor
        self.patch = patch
        self.prerelease = prerelease
        self.build = build
    }

    private static func numeric(_ part: Substring) -> UInt64? {
        guard !part.isEmpty, part.allSatisfy({ $0.isASCII && $0.isNumber }), part == "0" || !part.hasPrefix("0") else {
            return nil
        }
        return UInt64(part)
    }

    private static func isIdentifier(_ text: String) -> Bool {
        !text.isEmpty
            && text.unicodeScalars.allSatisfy {
                ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || $0 == "-"
            }
    }

    public var description: String {
        var text = "\(major).\(minor).\(patch)"
        if !prerelease.isEmpty { text += "-" + prerelease.joined(separator: ".") }
        if !build.isEmpty { text += "+" + build.joined(separator: ".") }
        return text
    }

    public static func < (lhs: SemanticVersion, rhs: SemanticVersion) -> Bool {
        if (lhs.major, lhs.minor, lhs.patch) != (rhs.major, rhs.minor, rhs.patch) {
            return (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
        }
        // A pre-release sorts before its release.
        if lhs.prerelease.isEmpty || rhs.prerelease.isEmpty { return !lhs.prerelease.isEmpty && rhs.prerelease.isEmpty }
        for (a, b) in zip(lhs.prerelease, rhs.prerelease) where a != b {
            switch (UInt64(a), UInt64(b)) {
            case (let x?, let y?): return x < y
            case (.some, nil): return true
            case (nil, .some): return false
            case (nil, nil): return a < b
            }
        }
        return lhs.prerelease.count < rhs.prerelease.count
    }

    public static func == (lhs: SemanticVersion, rhs: SemanticVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) == (rhs.major, rhs.minor, rhs.patch) && lhs.prerelease == rhs.prerelease
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(major)
        hasher.combine(minor)
        hasher.combine(patch)
        hasher.combine(prerelease)
    }
}
