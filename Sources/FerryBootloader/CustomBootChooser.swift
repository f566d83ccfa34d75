import FerrySystem

/// A boot chooser implemented by an executable of the integrator's (docs/boot-control.md):
///
///     <command> get-primary                 prints the bootname booted next
///     <command> set-primary <bootname>      makes it primary, with fresh tries
///     <command> get-state <bootname>        prints "good" or "bad"
///     <command> set-state <bootname> good|bad
///
/// Exit status 0 means success; anything else is an error Ferry reports. Each call is limited to
/// `timeoutSeconds`.
public final class CustomBootChooser: BootChooser {
    public let command: String
    public let bootnames: [String]
    public let timeoutSeconds: Int
    public var name: String { "custom (\(command))" }

    public init(command: String, bootnames: [String], timeoutSeconds: Int = 30) {
        self.command = command
        self.bootnames = bootnames
        self.timeoutSeconds = timeoutSeconds
    }

    private func call(_ arguments: [String]) throws(FerryError) -> String {
        let output = try ExternalCommand(
            role: "custom boot chooser", [command] + arguments, timeoutSeconds: timeoutSeconds
        )
        .check(failingWith: .bootEnvironmentInvalid)
        return output.split(whereSeparator: { $0 == "\n" || $0 == " " || $0 == "\t" }).first.map(String.init) ?? ""
    }

    public func primary() throws(FerryError) -> String? {
        let name = try call(["get-primary"])
        guard !name.isEmpty else { return nil }
        guard bootnames.contains(name) else {
            throw FerryError(
                code: .bootEnvironmentInvalid,
                message: "custom boot chooser says primary is '\(name)', which is no slot group")
        }
        return name
    }

    public func bootOrder() throws(FerryError) -> [String] {
        guard let first = try primary() else { return bootnames }
        return [first] + bootnames.filter { $0 != first }
    }

    public func states() throws(FerryError) -> [GroupBootState] {
        var states: [GroupBootState] = []
        for bootname in bootnames {
            let text = try call(["get-state", bootname])
            guard text == "good" || text == "bad" else {
                throw FerryError(
                    code: .bootEnvironmentInvalid,
                    message: "custom boot chooser get-state \(bootname) printed '\(text)', not good or bad")
            }
            states.append(GroupBootState(bootname: bootname, bootable: text == "good", triesLeft: nil, tried: nil))
        }
        return states
    }

    public func setPrimary(_ bootname: String) throws(FerryError) {
        try check(bootname)
        _ = try call(["set-primary", bootname])
    }

    public func setState(good: Bool, for bootname: String) throws(FerryError) {
        try check(bootname)
        _ = try call(["set-state", bootname, good ? "good" : "bad"])
    }
}
