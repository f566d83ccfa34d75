import FerrySystem

/// What the bootloader will do with one slot group.
public struct GroupBootState: Sendable, Equatable, Codable {
    public var bootname: String
    /// Whether the group may boot at all (U-Boot: tries left; GRUB: OK=1). False means bad.
    public var bootable: Bool
    /// U-Boot: boot attempts left; nil where the scheme has no counter.
    public var triesLeft: Int?
    /// GRUB: the group was tried since it was last confirmed (booted, not yet marked good).
    public var tried: Bool?
}

/// Switches between slot groups through the bootloader's variables.
///
/// Every method that changes something does it in one `BootEnvironment.update`: one atomic transition.
public protocol BootChooser: AnyObject {
    /// A name for messages (`uboot (fw_env.config)`).
    var name: String { get }
    /// The bootnames of the configured groups.
    var bootnames: [String] { get }
    /// The group the bootloader boots next: the first bootable one in its boot order.
    func primary() throws(FerryError) -> String?
    /// The boot order, as stored (bootnames).
    func bootOrder() throws(FerryError) -> [String]
    /// The state of every group.
    func states() throws(FerryError) -> [GroupBootState]
    /// Makes `bootname` the first to boot, with a fresh count of tries ("mark active").
    func setPrimary(_ bootname: String) throws(FerryError)
    /// Marks `bootname` good (bootable, counter reset: "confirmed") or bad (never booted again
    /// until made primary).
    func setState(good: Bool, for bootname: String) throws(FerryError)
}

extension BootChooser {
    /// Refuses a bootname that is no configured group.
    func check(_ bootname: String) throws(FerryError) {
        guard bootnames.contains(bootname) else {
            throw FerryError(
                code: .unknownSlot,
                message: "no slot group '\(bootname)' (groups: \(bootnames.joined(separator: ", ")))")
        }
    }

    /// The boot order with `bootname` first, keeping the order of the others (configured groups
    /// missing from `current` are appended).
    func order(putting bootname: String, first current: [String]) -> String {
        let kept = current.filter { $0 != bootname && bootnames.contains($0) }
        let rest = kept + bootnames.filter { $0 != bootname && !kept.contains($0) }
        return ([bootname] + rest).joined(separator: " ")
    }
}

/// RAUC-compatible U-Boot variables: `BOOT_ORDER="A B"` and `BOOT_<x>_LEFT` (hexadecimal tries left).
///
/// The boot script walks `BOOT_ORDER`, boots the first group with tries left and decrements its
/// counter before booting; Ferry resets the counter when the group is confirmed.
public final class UBootBootChooser: BootChooser {
    public let environment: any BootEnvironment
    public let bootnames: [String]
    public let tries: Int
    public var name: String { "uboot (\(environment.name))" }

    public init(environment: any BootEnvironment, bootnames: [String], tries: Int) {
        precondition((1...15).contains(tries), "U-Boot tries must be 1...15")
        self.environment = environment
        self.bootnames = bootnames
        self.tries = tries
    }

    static func left(_ variables: [String: String], _ bootname: String, default defaultTries: Int) -> Int {
        guard let text = variables["BOOT_\(bootname)_LEFT"] else { return defaultTries }
        let digits = text.hasPrefix("0x") ? String(text.dropFirst(2)) : text
        return Int(digits, radix: 16) ?? 0
    }

    func order(_ variables: [String: String]) -> [String] {
        guard let text = variables["BOOT_ORDER"] else { return bootnames }
        return text.split(separator: " ").map(String.init)
    }

    public func bootOrder() throws(FerryError) -> [String] { order(try environment.read()) }

    public func primary() throws(FerryError) -> String? {
        let variables = try environment.read()
        return order(variables).first { bootnames.contains($0) && Self.left(variables, $0, default: tries) > 0 }
    }

    public func states() throws(FerryError) -> [GroupBootState] {
        let variables = try environment.read()
        return bootnames.map { bootname in
            let left = Self.left(variables, bootname, default: tries)
            return GroupBootState(
                bootname: bootname, bootable: left > 0 && order(variables).contains(bootname), triesLeft: left,
                tried: nil)
        }
    }

    public func setPrimary(_ bootname: String) throws(FerryError) {
        try check(bootname)
        try environment.update([
            "BOOT_ORDER": order(putting: bootname, first: try bootOrder()),
            "BOOT_\(bootname)_LEFT": String(tries, radix: 16),
        ])
    }

    public func setState(good: Bool, for bootname: String) throws(FerryError) {
        try check(bootname)
        try environment.update(["BOOT_\(bootname)_LEFT": good ? String(tries, radix: 16) : "0"])
    }
}

/// RAUC-compatible GRUB variables: `ORDER="A B"`, `<x>_OK` and `<x>_TRY` (0/1).
///
/// The GRUB snippet boots the first group in `ORDER` with OK=1 and TRY=0, setting TRY=1 before it
/// boots: a group gets exactly one try. Confirming resets TRY to 0.
public final class GRUBBootChooser: BootChooser {
    public let environment: any BootEnvironment
    public let bootnames: [String]
    public var name: String { "grub (\(environment.name))" }

    public init(environment: any BootEnvironment, bootnames: [String]) {
        self.environment = environment
        self.bootnames = bootnames
    }

    func order(_ variables: [String: String]) -> [String] {
        guard let text = variables["ORDER"] else { return bootnames }
        return text.split(separator: " ").map(String.init)
    }

    public func bootOrder() throws(FerryError) -> [String] { order(try environment.read()) }

    public func primary() throws(FerryError) -> String? {
        let variables = try environment.read()
        let candidates = order(variables).filter { bootnames.contains($0) && variables["\($0)_OK"] == "1" }
        // As the snippet does: the first good group not yet tried; if all were tried, the first good one.
        return candidates.first { variables["\($0)_TRY"] != "1" } ?? candidates.first
    }

    public func states() throws(FerryError) -> [GroupBootState] {
        let variables = try environment.read()
        return bootnames.map { bootname in
            let ok = variables["\(bootname)_OK"] == "1"
            let tried = variables["\(bootname)_TRY"] == "1"
            return GroupBootState(
                bootname: bootname, bootable: ok && order(variables).contains(bootname), triesLeft: nil,
                tried: tried)
        }
    }

    public func setPrimary(_ bootname: String) throws(FerryError) {
        try check(bootname)
        try environment.update([
            "ORDER": order(putting: bootname, first: try bootOrder()), "\(bootname)_OK": "1", "\(bootname)_TRY": "0",
        ])
    }

    public func setState(good: Bool, for bootname: String) throws(FerryError) {
        try check(bootname)
        try environment.update(["\(bootname)_OK": good ? "1" : "0", "\(bootname)_TRY": "0"])
    }
}
