/// A program Ferry runs with a time limit: an install hook, a health check, a settings
/// validator, a custom boot chooser. One rule for every outcome, whoever runs it: it passed (exit
/// 0 in time), or it failed, and then how: an exit status, the time limit, or that it could not
/// start at all (missing, not executable), which is a failure like the others: what it was to
/// check is not trusted.
public struct ExternalCommand: Sendable {
    /// What it is, for messages: "the pre-install hook", "health check", "custom boot chooser".
    public let role: String
    public let arguments: [String]
    public let environment: [String: String]
    public let timeoutSeconds: Int

    public enum Outcome: Sendable, Equatable {
        case passed(output: String)
        case failed(status: Int32)
        case timedOut
        case couldNotStart(reason: String)
    }

    public init(role: String, _ arguments: [String], environment: [String: String] = [:], timeoutSeconds: Int) {
        precondition(!arguments.isEmpty, "Ferry bug: an external command without a program")
        self.role = role
        self.arguments = arguments
        self.environment = environment
        self.timeoutSeconds = timeoutSeconds
    }

    /// Runs it to its end (or its time limit).
    public func run() -> Outcome {
        let result: ChildProcess.Result
        do {
            result = try ChildProcess.run(arguments, environment: environment, timeoutSeconds: timeoutSeconds)
        } catch {
            return .couldNotStart(reason: error.message)
        }
        if result.timedOut { return .timedOut }
        return result.status == 0 ? .passed(output: result.output) : .failed(status: result.status)
    }

    /// How an outcome failed, in words that name the command ("health check '/bin/check' failed
    /// with status 7"); nil when it passed.
    public func failure(_ outcome: Outcome) -> String? {
        let named = "\(role) '\(arguments.joined(separator: " "))'"
        switch outcome {
        case .passed: return nil
        case .failed(let status): return "\(named) failed with status \(status)"
        case .timedOut: return "\(named) timed out after \(timeoutSeconds) s"
        case .couldNotStart(let reason): return "\(named) could not run (\(reason))"
        }
    }

    /// Runs it and returns its output; any failure throws `code` with the failure and `suffix`
    /// ("; group A is not confirmed").
    @discardableResult
    public func check(failingWith code: FerryError.Code, suffix: String = "") throws(FerryError) -> String {
        let outcome = run()
        if let failure = failure(outcome) { throw FerryError(code: code, message: failure + suffix) }
        guard case .passed(let output) = outcome else { return "" }
        return output
    }
}
