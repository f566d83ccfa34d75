import FerryCore
import FerrySystem
import Logging

/// What a device command needs: the configuration, its resolved slots, the booted group, and
/// (for commands that write) the global lock, held until the context is released.
struct DeviceContext {
    let configuration: SystemConfiguration
    let slots: [ResolvedSlot]
    let booted: BootedGroup
    let lock: FileLock?
    let logger: Logger

    /// Loads everything; with `writing`, takes the global lock first (before reading any state).
    static func load(_ global: GlobalOptions, writing command: String?) throws(FerryError) -> DeviceContext {
        let configuration = try global.loadConfiguration()
        let lock = try command.map { (name) throws(FerryError) in
            try StateStore(directory: configuration.stateDirectory).acquireWriteLock(command: name)
        }
        var resolver = SlotResolver()
        let slots = try resolver.resolveAll(configuration)
        let booted = try BootedGroup.detect(
            configuration: configuration, slots: slots, commandLine: try KernelCommandLine.current(),
            mounts: try MountTable.current())
        return DeviceContext(
            configuration: configuration, slots: slots, booted: booted, lock: lock, logger: Logger(label: "ferry"))
    }

    func bootControl() throws(FerryError) -> BootControl {
        try BootControl(configuration: configuration, booted: booted, logger: logger)
    }
}
