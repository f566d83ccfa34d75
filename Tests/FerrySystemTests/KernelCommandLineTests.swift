import FerrySystem
import FerryTestSupport
import Testing

/// Parsing `/proc/cmdline`: which group was booted, and `root=`.
@Suite struct KernelCommandLineTests {
    @Test(
        arguments: [
            ("console=ttyS0,115200 ferry.slot=A rootwait", "A"),
            ("rauc.slot=B quiet", "B"),
            // ferry.slot wins over rauc.slot wherever they stand.
            ("rauc.slot=B ferry.slot=A", "A"),
            ("ferry.slot=A rauc.slot=B", "A"),
            // The last value wins, as in the kernel.
            ("ferry.slot=A ferry.slot=B", "B"),
            ("rauc.slot=A rauc.slot=B", "B"),
            // Quotes group a value, and are removed.
            (#"ferry.slot="B""#, "B"),
            (#""ferry.slot=A" quiet"#, "A"),
            // A trailing newline (as /proc/cmdline has) and tabs are separators.
            ("quiet\tferry.slot=A\n", "A"),
            ("  ferry.slot=B  ", "B"),
            // Other parameters that merely contain the name do not count.
            ("xferry.slot=A ferry.slotx=B", nil),
            ("quiet splash", nil),
            ("", nil),
            ("ferry.slot", nil),
        ] as [(String, String?)])
    func bootedSlotName(commandLine: String, expected: String?) {
        #expect(KernelCommandLine(commandLine).bootedSlotName == expected)
    }

    @Test func quotedValuesKeepTheirSpaces() {
        let line = KernelCommandLine(#"init=/sbin/init dyndbg="file drivers/usb/* +p" ferry.slot=B"#)
        #expect(line.value("dyndbg") == "file drivers/usb/* +p")
        #expect(line.value("init") == "/sbin/init")
        #expect(line.bootedSlotName == "B")
        #expect(line.parameters.count == 3)
    }

    @Test func parametersKeepTheirOrderAndFlagsHaveNoValue() {
        let line = KernelCommandLine("ro quiet root=/dev/mmcblk0p2 console=ttyS0 empty=")
        #expect(line.parameters.map(\.name) == ["ro", "quiet", "root", "console", "empty"])
        #expect(line.parameters[0].value == nil)
        #expect(line.parameters[2].value == "/dev/mmcblk0p2")
        #expect(line.value("ro") == nil)
        #expect(line.value("empty") == "")
        #expect(line.value("missing") == nil)
    }

    @Test func aValueMayContainEqualsSigns() {
        let line = KernelCommandLine("root=PARTUUID=fe77e000-0000-4000-8000-000000000002 ferry.slot=A")
        #expect(line.rootDevice == "PARTUUID=fe77e000-0000-4000-8000-000000000002")
        #expect(
            line.rootDevice.flatMap(DeviceTag.init(parsing:))
                == .partitionUUID("fe77e000-0000-4000-8000-000000000002"))
    }

    @Test(
        arguments: [
            ("root=/dev/mmcblk0p2", "/dev/mmcblk0p2"),
            ("root=PARTLABEL=rootfs_b rw", "PARTLABEL=rootfs_b"),
            ("root=/dev/sda1 root=/dev/sda2", "/dev/sda2"),
            ("rootwait rootfstype=ext4", nil),
        ] as [(String, String?)])
    func rootDevice(commandLine: String, expected: String?) {
        #expect(KernelCommandLine(commandLine).rootDevice == expected)
    }

    @Test func currentReadsAFile() async throws {
        try await withTemporaryDirectory { dir in
            try makeFile("\(dir)/cmdline", bytes: Array("BOOT_IMAGE=/vmlinuz rauc.slot=B root=/dev/vda2\n".utf8))
            let line = try KernelCommandLine.current(path: "\(dir)/cmdline")
            #expect(line.bootedSlotName == "B")
            #expect(line.rootDevice == "/dev/vda2")
            #expect(throws: FerryError.self) { try KernelCommandLine.current(path: "\(dir)/missing") }
        }
    }

    @Test func theRunningKernelsCommandLineParses() throws {
        let line = try KernelCommandLine.current()
        // Whatever it holds, it splits into named parameters.
        #expect(line.parameters.allSatisfy { !$0.name.isEmpty })
    }
}
