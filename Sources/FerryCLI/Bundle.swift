import ArgumentParser
import FerryBundle
import FerryCore
import FerryCrypto
import FerryDelta
import FerryJSON
import FerrySystem
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension FerryCommand {
    /// `ferry bundle create|info|verify|encrypt|index`.
    struct Bundle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create, inspect and verify signed update bundles.",
            discussion: "The format is described in docs/bundle-format.md.",
            subcommands: [Create.self, Info.self, Verify.self, Encrypt.self, Index.self])

        /// Opens a bundle path, or standard input for "-".
        static func source(_ path: String) throws(FerryError) -> any ByteSource {
            path == "-" ? FileByteSource(standardInput: ()) : try FileByteSource(path: path)
        }
    }
}
