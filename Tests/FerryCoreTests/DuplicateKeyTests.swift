import FerryCore
import FerrySystem
import FerryTestSupport
import Testing

/// A key given twice is ambiguous (which one would count?): refused in configurations and manifests alike.
@Suite struct DuplicateKeyTests {
    @Test func aConfigurationWithAKeyTwiceIsInvalid() {
        let text = """
            {"compatible": "x", "compatible": "y", "bootloader": {"type": "grub", "grubenv": "g"},
             "slots": {"a": {"class": "rootfs", "bootname": "A", "device": "a.img"}, "b": {"class": "rootfs", "bootname": "B", "device": "b.img"}}}
            """
        expectFerryError(.configurationInvalid) {
            try SystemConfiguration.parse(Array(text.utf8), path: "/tmp/system.json")
        }
    }
}
