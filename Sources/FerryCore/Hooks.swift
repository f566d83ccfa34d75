import FerryBundle
import FerrySystem

/// Runs the configured pre- and post-install hooks.
public struct Hooks {
    public let configuration: HooksConfiguration

    /// Runs `command` (if configured) with `environment`; a non-zero exit, a timeout, or a
    /// command that cannot run fails.
    /// - Throws: `.hookFailed` naming the hook and how it failed.
    public func run(_ name: String, _ command: String?, environment: [String: String]) throws(FerryError) {
        guard let command else { return }
        try ExternalCommand(
            role: "the \(name) hook", [command], environment: environment, timeoutSeconds: configuration.timeoutSeconds
        )
        .check(failingWith: .hookFailed)
    }
}

/// The pre- and post-install hooks of one install, with the environment they get: the bundle,
/// its version and compatible, the booted and target groups, the slots written, the stage.
struct InstallHooks {
    enum Stage: String {
        case preInstall = "pre-install"
        case postInstall = "post-install"
    }

    let configuration: HooksConfiguration
    let environment: [String: String]

    init(
        configuration: SystemConfiguration, manifest: Manifest, bundle: String, booted: String, target: String,
        plan: InstallPlan
    ) {
        self.configuration = configuration.hooks
        environment = [
            "FERRY_BUNDLE": bundle, "FERRY_VERSION": manifest.version.description,
            "FERRY_COMPATIBLE": manifest.compatible,
            "FERRY_BOOTED_GROUP": booted, "FERRY_TARGET_GROUP": target, "FERRY_CONFIG": configuration.path,
            "FERRY_SLOTS": plan.writtenSlots.map(\.name).joined(separator: " "),
        ]
    }

    /// Runs the stage's hook, if one is configured: before anything is written it may still
    /// refuse; after, a failure blocks the switch (the group stays bad).
    func run(_ stage: Stage) throws(FerryError) {
        var environment = self.environment
        environment["FERRY_STAGE"] = stage.rawValue
        let command = stage == .preInstall ? configuration.preInstall : configuration.postInstall
        try Hooks(configuration: configuration).run(stage.rawValue, command, environment: environment)
    }
}
