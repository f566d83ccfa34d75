import ArgumentParser
import FerryCore
import FerrySystem

extension FerryCommand {
    /// `ferry mark good|bad|active [booted|other|<bootname or slot>]`.
    struct Mark: AsyncParsableCommand, TakesGlobalOptions {
        static let configuration = CommandConfiguration(
            abstract: "Mark a whole slot group good, bad or active.",
            discussion: """
                good: bootable, boot counter reset (confirm the running system). bad: never booted \
                again until made active. active: boot it next, with a fresh count of tries. The \
                target is 'booted' (default), 'other', a bootname (A) or any slot of the group \
                (rootfs_b); the whole group changes in one atomic environment write.
                """)

        enum State: String, ExpressibleByArgument, CaseIterable { case good, bad, active }

        @OptionGroup var global: GlobalOptions

        @Argument(help: "good, bad or active.")
        var state: State

        @Argument(help: "booted, other, a bootname or a slot name.")
        var target: String = "booted"

        func run() async throws {
            let context = try DeviceContext.load(global, writing: "mark \(state.rawValue)")
            let control = try context.bootControl()
            let bootname = try control.bootname(for: target)
            switch state {
            case .good: try control.markGood(bootname)
            case .bad: try control.markBad(bootname)
            case .active: try control.markActive(bootname)
            }
            Terminal.writeOutput("Group \(bootname) marked \(state.rawValue).\n")
        }
    }
}
