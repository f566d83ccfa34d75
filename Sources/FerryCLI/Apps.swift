import ArgumentParser
import FerryCore
import FerryJSON
import FerrySystem

extension FerryCommand {
    /// `ferry apps list|rollback`.
    struct Apps: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List app-only updates, or switch an app back to its previous version.",
            discussion:
                "Apps live in the configured appStore as <name>/<version>/, the active one behind <name>/current (docs/apps.md).",
            subcommands: [List.self, Rollback.self])

        static func store(_ context: DeviceContext) throws(FerryError) -> AppStore {
            guard let directory = context.configuration.appStore else {
                throw FerryError(
                    code: .configurationInvalid, message: "\(context.configuration.path) names no appStore")
            }
            return AppStore(directory: directory, keep: context.configuration.apps.keep, logger: context.logger)
        }

        struct List: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "List installed apps: active, previous and kept versions.")
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
                        "\(app.name): active \(app.current ?? "none"), previous \(app.previous ?? "none"), installed \(app.versions.joined(separator: " "))\n"
                    )
                }
            }
        }

        struct Rollback: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "Switch an app back to its previous version (atomically).")
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

extension FerryCommand {
    /// `ferry settings list|rollback`.
    struct Settings: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List configuration (settings) documents, or put a document's previous version back.",
            discussion:
                "Settings live in the configured settingsStore: <name> active, <name>.previous kept (docs/settings.md).",
            subcommands: [List.self, Rollback.self])

        static func store(_ context: DeviceContext) throws(FerryError) -> SettingsStore {
            guard let directory = context.configuration.settingsStore else {
                throw FerryError(
                    code: .configurationInvalid, message: "\(context.configuration.path) names no settingsStore")
            }
            return SettingsStore(directory: directory, configuration: context.configuration.settings)
        }

        struct List: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "List the settings documents and whether a previous version is kept.")
            @OptionGroup var global: GlobalOptions

            func run() async throws {
                let documents = try Settings.store(try DeviceContext.load(global, writing: nil)).list()
                if documents.isEmpty { Terminal.writeOutput("No settings installed.\n") }
                for document in documents {
                    Terminal.writeOutput("\(document.name)\(document.hasPrevious ? " (previous version kept)" : "")\n")
                }
            }
        }

        struct Rollback: AsyncParsableCommand, TakesGlobalOptions {
            static let configuration = CommandConfiguration(
                abstract: "Put a settings document's previous version back (atomically).")
            @OptionGroup var global: GlobalOptions
            @Argument(help: "The settings name.")
            var name: String

            func run() async throws {
                let context = try DeviceContext.load(global, writing: "settings rollback")
                try Settings.store(context).rollback(name)
                Terminal.writeOutput("Settings '\(name)': the previous version is back.\n")
            }
        }
    }
}
