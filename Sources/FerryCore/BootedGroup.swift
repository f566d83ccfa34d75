import FerrySystem
import SystemPackage

/// Which slot group the running system booted, and how Ferry knows.
public struct BootedGroup: Sendable, Equatable {
    /// The bootname, or nil when it cannot be told (Ferry then refuses to write any slot).
    public var bootname: String?
    /// How it was determined, for `status` ("kernel command line ferry.slot=A", …).
    public var source: String

    public init(bootname: String?, source: String) {
        self.bootname = bootname
        self.source = source
    }

    /// Determines the booted group.
    ///
    /// In order: the kernel command line's `ferry.slot=` (or RAUC's `rauc.slot=`); in sandbox mode
    /// the `booted` file in the state directory; the device named by `root=`; the device mounted
    /// on `/`. Sandbox mode is refused when the kernel command line names a slot: then a real
    /// device was booted from a slot, and a sandbox file must never override it.
    /// - Throws: `.configurationInvalid` when the command line names a group the configuration lacks,
    ///   or names one while the configuration asks for sandbox mode.
    public static func detect(
        configuration: SystemConfiguration, slots: [ResolvedSlot], commandLine: KernelCommandLine, mounts: MountTable
    ) throws(FerryError) -> BootedGroup {
        if let name = commandLine.bootedSlotName {
            if configuration.sandbox {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "\(configuration.path): sandbox mode is refused because the kernel command line names slot '\(name)'"
                )
            }
            guard configuration.group(name) != nil else {
                throw FerryError(
                    code: .configurationInvalid,
                    message:
                        "the kernel command line names slot group '\(name)', which \(configuration.path) does not have")
            }
            let parameter = commandLine.value("ferry.slot") != nil ? "ferry.slot" : "rauc.slot"
            return BootedGroup(bootname: name, source: "kernel command line \(parameter)=\(name)")
        }
        if configuration.sandbox {
            let store = StateStore(directory: configuration.stateDirectory)
            guard let name = store.sandboxBootedGroup() else {
                return BootedGroup(bootname: nil, source: "sandbox, but \(store.bootedPath) is missing")
            }
            guard configuration.group(name) != nil else {
                throw FerryError(
                    code: .stateInvalid,
                    message: "\(store.bootedPath) names slot group '\(name)', which \(configuration.path) does not have"
                )
            }
            return BootedGroup(bootname: name, source: "sandbox state \(store.bootedPath)")
        }
        if let root = commandLine.rootDevice, let number = deviceNumber(of: root),
            let slot = slots.first(where: { $0.deviceNumber == number })
        {
            return BootedGroup(bootname: slot.slot.bootname, source: "kernel command line root=\(root)")
        }
        if let mount = mounts.root,
            let slot = slots.first(where: { slot in
                guard let number = slot.deviceNumber else { return false }
                let parts = deviceNumberParts(number)
                return parts.major == mount.major && parts.minor == mount.minor
            })
        {
            return BootedGroup(bootname: slot.slot.bootname, source: "root file system on \(mount.source)")
        }
        return BootedGroup(
            bootname: nil, source: "unknown (no ferry.slot= on the kernel command line, root is no slot)")
    }

    /// The device number of a `root=` value (a path or a tag).
    static func deviceNumber(of root: String) -> UInt64? {
        var path = root
        if let tag = DeviceTag(parsing: root) {
            guard let found = DeviceLookup.device(for: tag) else { return nil }
            path = found
        }
        guard let status = try? FilePath(path).stat(), status.type == .blockSpecial else { return nil }
        return UInt64(status.specialDeviceID.rawValue)
    }
}

extension ResolvedSlot {
    /// The block device number, for slots that are block devices.
    var deviceNumber: UInt64? {
        if case .blockDevice(_, let number) = location { return number }
        return nil
    }
}
