import ArgumentParser
import FerryCore
import FerryJSON
import FerrySystem

extension FerryCommand {
    /// `ferry apps list|rollback`.
    struct Apps: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List app-only updates, or switch an app back to its previous version.",
            discussion: "Apps live in the configured appStore as <name>/<version>/, the active one behind <name>/current (docs/apps.md).",
            subcommands: [List.self, Rollback.self])

        static func store(_ context: DeviceContext) throws(FerryError) -> AppStore {
            guard let directory = context.configuration.appStore else {
                throw FerryError(code: .configurationInvalid, message: "\(context.configuration.path) names no appStore")
            }
            return AppStore(directory: directory, keep: context.configuration.apps.keep, logger: context.logger)
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List installed apps: active, previous and kept versions.")
            @OptionGroup var global: GlobalOptions
            @Flag(help: "Print JSON.")
            var json = false

            func run() async throws {
                let apps = try Apps.store(try DeviceContext.load(global, writing: nil)).list()
                if json {
                    let value = JSONValue.array(
                        apps.map { app in
                            .object([
                                "name": .string(app.name), "current": app.current.map(JSONValue.string) ?? .null,
                                "previous": app.previous.map(JSONValue.string) ?? .null,
                                "versions": .array(app.versions.map(JSONValue.string)),
                            ])
                        })
                    Terminal.writeOutput(String(decoding: value.serialized(), as: UTF8.self))
                    return
                }
                if apps.isEmpty { Terminal.writeOutput("No apps installed.\n") }
                for app in apps {
                    Terminal.writeOutput(
                        "\(app.name): active \(app.current ?? "none"), previous \(app.previous ?? "none"), installed \(app.versions.joined(separator: " "))\n")
                }
            }
        }

        struct Rollback: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Switch an app back to its previous version (atomically).")
            @OptionGroup var global: GlobalOptions
            @Argument(help: "The app's name.")
            var name: String

            func run() async throws {
                let context = try DeviceContext.load(global, writing: "apps rollback")
                try AppStore.checkName(name, what: "app name")
                let (from, to) = try Apps.store(context).rollback(name)
                Terminal.writeOutput("App '\(name)' switched back from \(from ?? "none") to \(to).\n")
            }
        }
    }
}
