namespace Virt;

/// <summary>What a command run in the guest by <see cref="GuestAgent.ExecAsync(string, IEnumerable{string}?, string?, CancellationToken)"/> produced.</summary>
/// <param name="ExitCode">The exit status; 128 + N when signal N ended it, 127 when the program could not be started.</param>
/// <param name="StandardOutput">Its standard output, decoded as UTF-8.</param>
/// <param name="StandardError">Its standard error, decoded as UTF-8.</param>
public sealed record GuestExecResult(int ExitCode, string StandardOutput, string StandardError)
{
    /// <summary>Whether the command exited with status 0.</summary>
    public bool Succeeded => ExitCode == 0;
}

/// <summary>A command to run in the guest with streamed input and output (<see cref="GuestAgent.ExecAsync(GuestCommand, CancellationToken)"/>).</summary>
public sealed class GuestCommand
{
    /// <summary>The program: a path, or a name looked up in the agent's PATH (<c>/bin:/sbin</c> in the guest kit).</summary>
    public required string FileName { get; init; }

    /// <summary>The arguments after the program name.</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>Environment variables set for the command on top of the agent's own.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    /// <summary>Read to its end and given to the command as standard input; without it, standard input is empty.</summary>
    public Stream? StandardInput { get; init; }

    /// <summary>Receives the command's standard output as it arrives; without it, the output is discarded.</summary>
    public Stream? StandardOutput { get; init; }

    /// <summary>Receives the command's standard error as it arrives; without it, the output is discarded.</summary>
    public Stream? StandardError { get; init; }
}

/// <summary>The guest agent refused a request (a file it cannot open, a program it cannot start) or broke its protocol.</summary>
public sealed class GuestAgentException : Exception
{
    /// <summary>Creates the exception.</summary>
    public GuestAgentException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public GuestAgentException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public GuestAgentException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
