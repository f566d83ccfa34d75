import ArgumentParser
import FerryCore
import FerryCrypto
import FerrySystem

extension FerryCommand {
    /// `ferry write-slot <slot> <image | image.xz>`.
    struct WriteSlot: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            commandName: "write-slot",
            abstract: "Write an image straight into one slot (operator action: recovery, factory).",
            discussion: """
                No bundle and no signature check: this is for operators. It still refuses the booted \
                group, mounted slots, a slot another writer holds, an image larger than the slot and \
                one that is empty or not xz, all before anything changes; then it marks the slot's \
                group bad (make it active with 'ferry mark active' when the group is complete), \
                writes, reads the slot back, and records its SHA-256. It never raises the security \
                floor.
                """)

        @OptionGroup var global: GlobalOptions
        @Argument(help: "The slot name (rootfs_b).") var slot: String
        @Argument(help: "A raw image, or an .xz- or .zst-compressed one.") var image: String
        @Option(help: "Progress: auto, bar, lines or json.") var progress: ProgressMode = .auto

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "write-slot")
            var writer = SlotWriter(
                configuration: context.configuration, booted: context.booted, logger: context.logger)
            let renderer = ProgressRenderer(mode: progress)
            writer.progress = { renderer.handle($0) }
            let (digest, size) = try writer.write(slotName: slot, image: Paths.absolute(image))
            Terminal.writeOutput(
                "\nWrote \(size) bytes into \(slot) (sha256 \(digest.hex)); its group stays marked bad until made active.\n"
            )
        }
    }
}
