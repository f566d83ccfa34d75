import FerryCLI
import Logging

/// The `ferry` executable: bootstrap logging (only here), then hand over to the CLI.
@main
struct Entrypoint {
    static func main() async {
        let verbose = CommandLine.arguments.contains("--verbose")
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .debug : .warning
            return handler
        }
        await FerryCommand.mainWithFerryErrors()
    }
}
